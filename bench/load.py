"""Team capacity against a running ``greentrack serve``: N simulated developers re-typing code, swept over N.

The same entry point as ``python -m greentrack.bench.load`` (``server/greentrack/bench/load.py`` says how it
works; docs/benchmarks.md, "Team capacity", how it was run). Example:

    PYTHONPATH=server python bench/load.py --server http://127.0.0.1:8765 --levels 1,2 --duration 30 --out x.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from greentrack.bench.load import main

if __name__ == "__main__":
    raise SystemExit(main())
