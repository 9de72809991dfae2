"""Summarise py-spy's raw (collapsed) stacks: samples per thread, and the leaf frames and the greentrack frames
that take the most samples in each. Used by ``bench/gpu_profile_serve.sh``.

    python3 bench/pyspy_summary.py pyspy_server.txt [pyspy_client.txt ...]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int = 12) -> None:
    """Print, per thread, its sample count, its top leaf frames and its top greentrack frames (inclusive)."""
    threads: dict[str, Counter[str]] = {}
    ours: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if len(frames) > 1 and frames[1].startswith("thread"):
            thread = f"{frames[0]} {frames[1]}"
        totals[thread] += count
        threads.setdefault(thread, Counter())[frames[-1]] += count
        seen = {f for f in frames if "greentrack" in f}
        for f in seen:
            ours.setdefault(thread, Counter())[f] += count
    print(f"=== {path.name}: {sum(totals.values())} samples")
    for thread, n in totals.most_common(10):
        print(f"--- {thread}: {n} samples")
        for frame, c in threads[thread].most_common(top):
            print(f"  leaf {c:6d}  {frame[:150]}")
        for frame, c in ours.get(thread, Counter()).most_common(top):
            print(f"  ours {c:6d}  {frame[:150]}")


def main(argv: list[str]) -> None:
    for name in argv:
        path = Path(name)
        if path.exists():
            summarise(path)
        else:
            print(f"=== {name}: missing")


if __name__ == "__main__":
    main(sys.argv[1:])
