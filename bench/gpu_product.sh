#!/usr/bin/env bash
# The product path on an NVIDIA GPU, as a user runs it: `greentrack doctor`, `greentrack complete` (CLI, fresh
# process each), `greentrack calibrate`, completions again with the calibration, and the weekly report — real
# NVML energy, real SQLite. Run on the device machine from the repo root, with sqlite-utils carried in .whl/:
#   bash bench/gpu_product.sh "$OUT"
set -uo pipefail
out="${1:?output folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:server PYTHONUNBUFFERED=1
export GREENTRACK_DB="$out/gpu.db" XDG_CACHE_HOME=/tmp/gt-cache GREENTRACK_DEVELOPER=gpu-bench@example.com
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
model=/tmp/qwen-shape
python3 bench/gpu_make_model.py "$model" || exit 1
gt() { python3 -m greentrack "$@" --model "$model" --device cuda; }
gt doctor --json > "$out/doctor.json"; echo "doctor rc=$?"
for i in 1 2 3; do
  gt complete examples/shapes.py --line 16 --col 15 --json --max-tokens 32 >> "$out/complete_uncalibrated.jsonl"
  echo "complete rc=$?"
done
time gt calibrate --repeats 3 > "$out/calibrate.txt" 2>&1; echo "calibrate rc=$?"; tail -30 "$out/calibrate.txt"
for i in 1 2 3; do
  gt complete examples/shapes.py --line 16 --col 15 --json --max-tokens 32 >> "$out/complete_calibrated.jsonl"
  echo "complete rc=$?"
done
python3 -m greentrack report --all --format json > "$out/report.json"; echo "report rc=$?"
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("complete_uncalibrated.jsonl", "complete_calibrated.jsonl"):
    for line in (out / name).read_text().splitlines():
        r = json.loads(line)
        print(f"{name[9:-6]:>12} {r['method']:>10} {r['meter']:>10} prompt {r['prompt_tokens']:>4} "
              f"out {r['completion_tokens']:>3} prefill {r['prefill_ms']:6.1f} ms {r['prefill_j']:6.2f} J  "
              f"decode {r['decode_ms']:6.1f} ms {r['decode_j']:6.2f} J  total {r['total_j']:6.2f} ± "
              f"{r['uncertainty_j'] if r['uncertainty_j'] is None else round(r['uncertainty_j'], 2)} J")
d = json.loads((out / "doctor.json").read_text())
print("doctor meters:", [(m["name"], m["available"]) for m in d["meters"]], "model:", d["model"].get("ok"))
PY
