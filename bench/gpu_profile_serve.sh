#!/usr/bin/env bash
# Where a loaded `greentrack serve --backend vllm` spends its host time (issue 12 point 5: at 64 developers the
# server answered p95 in 1.9 s while the GPU was ~12 % busy). On the device machine, after the two-call vLLM
# install, from the repo root, with .whl/pyspy carried:
#   source .vx/c2/install.sh && bash bench/gpu_profile_serve.sh "$OUT"
# Starts the server (as bench/gpu_serve.sh does), drives N developers (GT_DEVS, default 64; GT_BUDGET=line for
# line budgets) with bench/load.py for
# GT_LOAD_S seconds, and meanwhile samples the server's and the load client's Python stacks with py-spy (every
# thread, idle frames left out, engine-core subprocesses included), and their threads' CPU with top. GT_SERVE_FLAGS:
# more `greentrack serve` flags (e.g. "--data-parallel-size 2" on two GPUs). Files in $OUT:
# serve_log.txt, load.json, load_log.txt, pyspy_server.txt, pyspy_client.txt, top.txt, summary.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
out="${1:?output folder}"
devs=${GT_DEVS:-64}
load_s=${GT_LOAD_S:-45}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/server" XDG_CACHE_HOME=/tmp/gt-cache \
  GREENTRACK_DEVELOPER=gpu-bench@example.com PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pyspy .whl/pyspy/*.whl
spy=/tmp/pyspy/bin/py-spy
model=/tmp/qwen-shape
[ -d "$model" ] || python3 bench/gpu_make_model.py "$model" > "$out/make_model.txt" 2>&1 || exit 1
db=/tmp/gt-prof/serve.db
mkdir -p /tmp/gt-prof
port=8767
# shellcheck disable=SC2086  # GT_SERVE_FLAGS: more serve flags, as words (e.g. "--data-parallel-size 2")
start_serve $port "$out/serve_log.txt" 300 --backend vllm --device cuda --model "$model" --db "$db" \
  --idle-period 5 --max-num-seqs 128 ${GT_SERVE_FLAGS:-}
echo "server up? $(health_of $port)"
python3 bench/load.py --server "http://127.0.0.1:$port" --mint-db "$db" --levels "$devs:$load_s" \
  --budget "${GT_BUDGET:-fixed}" \
  --out "$out/load.json" > "$out/load_log.txt" 2>&1 &
client=$!
sleep 12
rec=$(( load_s - 20 ))
$spy record --pid "$server" --subprocesses --nonblocking --threads --rate 50 --duration "$rec" --format raw \
  -o "$out/pyspy_server.txt" > /dev/null 2>&1 &
spy1=$!
$spy record --pid "$client" --nonblocking --threads --rate 50 --duration "$rec" --format raw \
  -o "$out/pyspy_client.txt" > /dev/null 2>&1 &
spy2=$!
sleep 5
{ top -b -H -n 3 -d 3 -w 200 | grep -E 'PID|python|VLLM|greentrack|uvicorn|Engine' | head -80; } > "$out/top.txt" 2>&1
{ for p in $server $(pgrep -P "$server"); do echo "== py-spy dump $p"; $spy dump --pid "$p" --nonblocking 2>&1 | head -120; done; } \
  > "$out/dumps.txt" 2>&1
wait $spy1 $spy2 $client
stop_serve
python3 bench/pyspy_summary.py "$out/pyspy_server.txt" "$out/pyspy_client.txt" > "$out/summary.txt" 2>&1
cat "$out/summary.txt" | head -120
tail -30 "$out/load_log.txt"
