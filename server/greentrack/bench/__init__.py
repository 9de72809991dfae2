"""``greentrack bench``: replay real typing through the real product, configurations side by side.

Flow: ``script`` turns files into what a developer types and when (deterministic for a seed) and holds the
acceptance oracle; ``replay`` drives each configuration's pipeline (or a ``greentrack serve``) keystroke by
keystroke as the editor does, interleaved; ``results`` sums the records into the figures; ``render`` shows them
(table, JSON, HTML); ``command`` wires it for ``cli.py``.
"""
