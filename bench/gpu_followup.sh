#!/usr/bin/env bash
# The meter's cost (issue 13), zeus vs NVML (issue 13) and `greentrack bench --server` against vLLM (issue 14) on
# the device machine, in one command after the two-call vLLM install, from the repo root, with .whl carried:
#   source .vx/c2/install.sh && bash bench/gpu_followup.sh "$OUT"
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
out="${1:?output folder}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/server:$PWD" XDG_CACHE_HOME=/tmp/gt-cache \
  GREENTRACK_DEVELOPER=gpu-bench@example.com PYTHONUNBUFFERED=1
model=/tmp/qwen-shape
[ -d "$model" ] || python3 bench/gpu_make_model.py "$model" > "$out/make_model.txt" 2>&1 || exit 1
timeout 150 python3 bench/meter_cost.py --device cuda --out "$out" --idle-s 20 --completions 20 > "$out/meter_cost.txt" 2>&1
echo "meter_cost rc=$?"; tail -8 "$out/meter_cost.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
timeout 150 python3 bench/gpu_meter_compare.py --out "$out" > "$out/meter_compare.txt" 2>&1
echo "meter_compare rc=$?"; tail -25 "$out/meter_compare.txt"
port=8766
mkdir -p /tmp/gt-bench
start_serve $port "$out/bench_serve_log.txt" 150 --backend vllm --device cuda --model "$model" --db /tmp/gt-bench/b.db
timeout 200 python3 -m greentrack bench --server "http://127.0.0.1:$port" --files 3 --json > "$out/bench_server.json" \
  2> "$out/bench_server_err.txt"
echo "bench rc=$?"; tail -c 1500 "$out/bench_server.json"; tail -5 "$out/bench_server_err.txt"
stop_serve
