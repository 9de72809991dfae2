"""CPU, embedded model: time to suggestion while re-typing a real file, with and without KV reuse and stop rules.

    .venv/bin/python bench/engine_cpu_retype.py [--module textwrap] [--lines 100] [--samples 24] [--max-tokens 32]

Re-types the first ``--lines`` lines of a standard-library module character by character and asks for a
completion at ``--samples`` evenly spaced positions (the document is what has been typed so far). At each
position the four configurations run back to back (interleaved, so the shared machine's load hits all of them
alike): baseline (no KV reuse, no stop rules: generation ends at EOS or ``--max-tokens``), reuse only, stop
rules only, and both (the product's default). Reports median time to suggestion, prefill/decode time, prompt
tokens actually computed, tokens generated, and energy per suggestion from ``greentrack.energy`` (on a CPU
without RAPL: the CPU-time estimate, method ``estimated``, ±50 %).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from greentrack.energy.monitor import open_monitor
from greentrack.engine.loading import load_model, resolve_model
from greentrack.engine.transformers_backend import TransformersBackend
from greentrack.engine.types import CancelToken, CompletionRequest

CONFIGS = {
    "baseline": {"reuse": False, "stop_rules": False},
    "reuse": {"reuse": True, "stop_rules": False},
    "stops": {"reuse": False, "stop_rules": True},
    "reuse+stops": {"reuse": True, "stop_rules": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="textwrap")
    ap.add_argument("--lines", type=int, default=100)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--context-tokens", type=int, default=1024)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    spec = importlib.util.find_spec(args.module)
    assert spec is not None and spec.origin
    src = "".join(Path(spec.origin).read_text().splitlines(keepends=True)[: args.lines])
    start = len("".join(src.splitlines(keepends=True)[: args.lines // 3]))
    positions = [start + (len(src) - start) * i // args.samples for i in range(1, args.samples + 1)]

    t = time.monotonic()
    loaded = load_model(resolve_model("embedded"), "cpu")
    load_s = time.monotonic() - t
    backends = {name: TransformersBackend(loaded=loaded, reuse=cfg["reuse"], stop_rules=cfg["stop_rules"])
                for name, cfg in CONFIGS.items()}
    monitor = open_monitor("cpu")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for i, pos in enumerate(positions):
        text = src[:pos]
        for name, backend in backends.items():
            t0 = time.monotonic()
            r = backend.complete(CompletionRequest(f"{name}-{i}", f"doc-{name}", text, pos,
                                                   max_tokens=args.max_tokens, max_time_s=30.0,
                                                   context_tokens=args.context_tokens), CancelToken())
            wall_s = time.monotonic() - t0
            energy = monitor.phase_energy(r.spans)
            pre, dec = r.span("prefill"), r.span("decode")
            rows[name].append({
                "latency_ms": wall_s * 1e3,
                "first_token_ms": ((pre.end_s if pre else r.ended_s) - r.started_s) * 1e3,
                "prefill_ms": (pre.duration_s if pre else 0) * 1e3,
                "decode_ms": (dec.duration_s if dec else 0) * 1e3,
                "computed_prompt_tokens": r.prompt_tokens - r.reused_prompt_tokens,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "energy_j": sum(e.energy_j for e in energy),
                "prefill_j": sum(e.energy_j for e in energy if e.kind == "prefill"),
                "decode_j": sum(e.energy_j for e in energy if e.kind == "decode"),
                "stop": r.stop_reason,
                "text": r.text,
            })
        print(f"{i + 1}/{len(positions)} " + " ".join(
            f"{n}={rows[n][-1]['latency_ms']:.0f}ms/{rows[n][-1]['completion_tokens']}t" for n in rows), flush=True)
    meter = monitor.meter_name
    method = monitor.method
    monitor.close()

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in rows[name]))

    summary = {name: {k: med(name, k) for k in ("latency_ms", "first_token_ms", "prefill_ms", "decode_ms",
                                                "computed_prompt_tokens", "prompt_tokens", "completion_tokens",
                                                "energy_j", "prefill_j", "decode_j")} for name in rows}
    for name in rows:
        summary[name]["mean_energy_j"] = statistics.fmean(r["energy_j"] for r in rows[name])
        summary[name]["mean_latency_ms"] = statistics.fmean(r["latency_ms"] for r in rows[name])
    import torch

    info = {"module": args.module, "lines": args.lines, "samples": len(positions), "max_tokens": args.max_tokens,
            "context_tokens": args.context_tokens, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "dtype": str(loaded.dtype),
            "load_s": load_s, "meter": meter, "method": method, "load_avg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    base = summary["baseline"]
    print(json.dumps(info))
    print("\n| config | median latency ms | mean latency ms | prefill ms | decode ms | prompt tokens computed "
          "| tokens generated | energy J (median) | energy J (mean) | energy vs baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        print(f"| {name} | {s['latency_ms']:.0f} | {s['mean_latency_ms']:.0f} | {s['prefill_ms']:.0f} | "
              f"{s['decode_ms']:.0f} | {s['computed_prompt_tokens']:.0f} of {s['prompt_tokens']:.0f} | "
              f"{s['completion_tokens']:.0f} | {s['energy_j']:.2f} | {s['mean_energy_j']:.2f} | "
              f"{s['mean_energy_j'] / base['mean_energy_j']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
