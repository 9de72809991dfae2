#!/usr/bin/env bash
# Tensor parallelism at low load (issue 12, point 6): `greentrack serve --backend vllm` on one GPU (TP=1), then on two
# (--tensor-parallel-size 2), each under 1 and 4 simulated developers (bench/load.py); energy from the server's
# records (it meters every GPU it uses) and from the GPUs' counters over each window (TP=1: GPU 0; TP=2: 0 and 1).
# On a 2-GPU device machine (kind nvidia-h100-x2 or nvidia-h200-x2), after the two-call vLLM install:
#   source .vx/c2/install.sh && bash bench/gpu_serve_tp2.sh "$OUT"
# Files in $OUT: env.txt, load_tp1.json, load_tp2.json, serve_tp1.txt, serve_tp2.txt, run_log.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}"
{ nvidia-smi --query-gpu=index,name,driver_version,power.limit --format=csv,noheader; nvidia-smi topo -m; } \
  > "$out/env.txt" 2>&1
make_model || exit 1
levels=${GT_LEVELS:-1:30,4:30}
for tp in 1 2; do
  db=/tmp/gt-tp$tp/serve.db; mkdir -p /tmp/gt-tp$tp
  port=$(( 8765 + tp )); gpus=0; [ $tp = 2 ] && gpus=0,1
  device=cuda; [ $tp = 1 ] && device=cuda:0
  start_serve $port "$out/serve_tp$tp.txt" 200 --backend vllm --device $device --model "$model" --db "$db" \
    --idle-period 5 --tensor-parallel-size $tp
  say "TP=$tp server: $(health_of $port)"
  python3 bench/load.py --server "http://127.0.0.1:$port" --mint-db "$db" --levels "$levels" --gpus $gpus \
    --out "$out/load_tp$tp.json" >> "$log" 2>&1
  say "TP=$tp sweep rc=$?"
  stop_serve
done
say "done"
