"""``python -m greentrack``: the same command line as the ``greentrack`` script."""

from greentrack.cli import main

if __name__ == "__main__":
    main()
