"""Fit the interval error model that greentrack ships (``server/greentrack/data/interval_model.json``).

    PYTHONPATH=server:. .venv/bin/python bench/fit_interval_model.py tests/energy/data/h100_mixed.json [more.json …]

Input: recordings in the ``h100_mixed.json`` format (``bench/gpu_validate_attribution.py`` writes one per GPU run).
Each is replayed through the attribution, uncalibrated and calibrated, per request (``bench/interval_data.py``);
the relative errors against the long-window truth give, per (kind, duration bin, calibrated), the split-conformal
90 % interval (``greentrack.energy.interval.fit_error_model``). Prints a held-out check (fit on even requests,
test on odd) before writing the model fitted on everything, with its provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.interval_data import Case, cases, interval_of, load_recording, summarize

from greentrack.energy.interval import fit_error_model

OUT = Path(__file__).resolve().parent.parent / "server" / "greentrack" / "data" / "interval_model.json"


def _root(case: Case) -> str:
    return case.request.split("/")[0]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recordings", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    observations = []
    devices, dates = set(), set()
    for path in args.recordings:
        rec = load_recording(json.loads(path.read_text()))
        devices.add(rec.device)
        dates.add(rec.date[:10])
        for calibrated in (False, True):
            cs = cases(rec, calibrated=calibrated)
            observations += [c.observation(calibrated) for c in cs]
            roots = sorted({_root(c) for c in cs})
            train = set(roots[::2])
            half = fit_error_model([c.observation(calibrated) for c in cs if _root(c) in train])
            test = [(c, interval_of(c, half, calibrated)) for c in cs
                    if _root(c) not in train and c.kind == "completion"]
            print(f"{path.name} calibrated={calibrated}: held-out completions ≥ 100 ms "
                  f"{json.dumps(summarize(test, min_s=0.1))}; < 100 ms {json.dumps(summarize(test, max_s=0.1))}")
    model = fit_error_model(observations, meters=("nvml:",), provenance={
        "device": ", ".join(sorted(devices)), "recorded": ", ".join(sorted(dates)),
        "fitted": datetime.now(UTC).isoformat(timespec="seconds"),
        "script": "bench/fit_interval_model.py " + " ".join(p.name for p in args.recordings),
        "sampler": "NVML energy counter read every 20 ms (always on in the recording; on demand: the same reads "
                   "around work)",
        "truth": "steady power of ≥ 2.5 s windows of identical phases × the phase's duration; decodes, where the "
                 "recording has it, from windows of their own request shape (decode/after/N)",
        "note": "relative error = truth / figure − 1; decode pieces cut from real decodes (bench/interval_data.py)",
    })
    args.out.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
    print(f"wrote {args.out}: {len(model.entries)} entries from {len(observations)} observations")


if __name__ == "__main__":
    main(sys.argv[1:])
