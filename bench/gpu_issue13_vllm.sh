#!/usr/bin/env bash
# Issue 13: the phases served by vLLM against long-window truth, with vLLM's async scheduling off and on (a batch
# queue schedules the next step before the last one's output is handled, which moves the per-request timestamps
# the product times phases by). The truth measures the power of the gaps between requests (padded windows) instead
# of averaging it into the phases. On the device machine, after the two-call vLLM install
# (../shared/gpu-vllm/README.md), from the repo root:
#   source .vx/c2/install.sh && bash bench/gpu_issue13_vllm.sh "$OUT"
# Files in $OUT: run_log.txt, validate_<mode>.txt and v_<mode>/ (results.json, intervals.json, h100_mixed.json).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 560
export PYTHONPATH="$PYTHONPATH:$PWD"
make_model || exit 1
for mode in ${GT_ASYNC_MODES:-off on}; do
  if [ "$(left)" -lt 170 ]; then say "no time left for async scheduling $mode"; break; fi
  timeout $(( $(left) - 5 )) python3 bench/gpu_validate_attribution.py --backend vllm --model "$model" \
    --out "$out/v_$mode" --requests "${GT_REQUESTS:-60}" --async-scheduling "$mode" > "$out/validate_$mode.txt" 2>&1
  say "async scheduling $mode: rc=$?"
  grep -E "async scheduling|truth|mixed_|prefill/|decode:" "$out/validate_$mode.txt" | cut -c1-220 | tee -a "$log"
done
say "done"
