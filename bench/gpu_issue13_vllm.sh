#!/usr/bin/env bash
# Issue 13: the phases served by vLLM against long-window truth, with vLLM's async scheduling off and on (a batch
# queue schedules the next step before the last one's output is handled, which moves the per-request timestamps
# the product times phases by). The truth measures the power of the gaps between requests (padded windows) instead
# of averaging it into the phases. On the device machine, after the two-call vLLM install
# (../shared/gpu-vllm/README.md), from the repo root:
#   source .vx/c2/install.sh && bash bench/gpu_issue13_vllm.sh "$OUT"
# Files in $OUT: run_log.txt, validate_<mode>.txt and v_<mode>/ (results.json, intervals.json, h100_mixed.json).
# Knobs: GT_ASYNC_MODES ("off on"), GT_REQUESTS (90 completions per mode), GT_LONG_SHARE (0.5 of them decode
# GT_LONG_OUTPUT_TOKENS − 1 = 64 tokens: completions of ≥ 100 ms for the vLLM error model), GT_ROUNDS (1: the truth's
# and the calibration's windows measured that many times, medians kept; 3 takes ~300 s a mode). About 340 s on an H200
# for both modes (the run of 2026-11-27 with 60 short completions: 279 s).
# Then, with this machine's two recordings added to the others (held-out checks leave each machine out; the model is
# written only when they hold): PYTHONPATH=server:. python3 bench/fit_interval_model.py @bench/interval_runs_vllm.txt
# NAME="$OUT"/v_off/h100_mixed.json NAME="$OUT"/v_on/h100_mixed.json; copy both into tests/energy/data and list
# them in bench/interval_runs_vllm.txt to keep the fit reproducible. bench/replay_calibration.py replays the
# calibration variants (also in validate_<mode>.txt). Many files: tar "$OUT" before it comes back from the device.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 560
export PYTHONPATH="$PYTHONPATH:$PWD"
make_model || exit 1
for mode in ${GT_ASYNC_MODES:-off on}; do
  if [ "$(left)" -lt 170 ]; then say "no time left for async scheduling $mode"; break; fi
  timeout $(( $(left) - 5 )) python3 bench/gpu_validate_attribution.py --backend vllm --model "$model" \
    --out "$out/v_$mode" --requests "${GT_REQUESTS:-90}" --async-scheduling "$mode" \
    --long-share "${GT_LONG_SHARE:-0.5}" --long-output-tokens "${GT_LONG_OUTPUT_TOKENS:-65}" \
    --rounds "${GT_ROUNDS:-1}" \
    > "$out/validate_$mode.txt" 2>&1
  say "async scheduling $mode: rc=$?"
  grep -E "async scheduling|truth|mixed_|prefill/|decode:|replay" "$out/validate_$mode.txt" | cut -c1-220 | tee -a "$log"
done
say "done"
