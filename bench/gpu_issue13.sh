#!/usr/bin/env bash
# Issue 13 on one GPU, in one call (no vLLM needed): the attribution and 90 % interval validation with decode
# truth of the workload's own shape and 120 completions (bench/gpu_validate_attribution.py), then the meter's own
# cost in its three schedules (bench/meter_cost.py). From the repo root on the device machine:
#   bash bench/gpu_issue13.sh "$OUT"
# Files in $OUT: gpu.txt, validate.txt, validate/ (results.json, intervals.json, h100_mixed.json, h100_trace.json),
# meter_cost.txt, meter_cost.json.
set -uo pipefail
out="${1:?output folder}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/server:$PWD" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader; nproc; uptime
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  > "$out/gpu.txt" 2>&1
mkdir -p "$out/validate"
timeout ${GT_VALIDATE_S:-330} python3 bench/gpu_validate_attribution.py --out "$out/validate" \
  --requests ${GT_REQUESTS:-120} > "$out/validate.txt" 2>&1
echo "validate rc=$?"; grep -E 'truth|error_pct|intervals' "$out/validate.txt" | cut -c1-400 | tail -24
timeout ${GT_METER_S:-240} python3 bench/meter_cost.py --device cuda --out "$out" --idle-s 15 --completions 20 \
  > "$out/meter_cost.txt" 2>&1
echo "meter_cost rc=$?"; tail -5 "$out/meter_cost.txt"
