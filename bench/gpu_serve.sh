#!/usr/bin/env bash
# Issues 11 and 12 on one GPU, in one command: the batched calibration and the validation against marginal energy
# (one engine, in-process: bench/gpu_validate_batching.py), then `greentrack serve --backend vllm` with that
# calibration and the load sweep against it (bench/load.py; its N=16 and N=1 levels, 45 s each, are issue 11's run).
# On the device machine, after the two-call vLLM install (../shared/gpu-vllm/README.md), from the repo root:
#   source .vx/c2/install.sh && bash bench/gpu_serve.sh "$OUT"
# Budget: GT_BUDGET_S (default 540 s from this script's start; lower it when the install runs in the same call).
# Later parts shrink or are dropped when time runs short; every part writes its JSON as it goes. Files in $OUT:
# env.txt, validate_batching.json, load_sweep.json, serve_log.txt, run_log.txt (≤ 8, flat).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 540
write_env
db=/tmp/gt-serve/serve.db
mkdir -p /tmp/gt-serve
make_model || exit 1

# The sweep's levels in priority order (issue 11's 16 and 1 developers first); each costs its duration + ~5 s,
# the server's start ~70 s. What the sweep needs is kept back from the validation.
sweep_levels=${GT_LEVELS:-16:45 1:45 64:30 128:30 4:30}
sweep_need=95
for level in $sweep_levels; do sweep_need=$(( sweep_need + ${level#*:} + 5 )); done

# (b) + (c): calibration (per-phase + batched) and validation, one engine. Windows: A, A+B1, A+B2, and A2 (the
# marginal's noise) when there is room: startup ~75 s + calibration ~45 s + 33 s a window (H200).
validate_s=${GT_VALIDATE_S:-30}
room=$(( $(left) - sweep_need ))
skip=A2
[ $room -ge $(( 130 + 4 * (validate_s + 3) )) ] && skip=""
[ $room -lt 150 ] && room=150
say "validate + calibrate (window ${validate_s}s, skip '${skip}', ${room}s), $(left)s left"
timeout $room python3 bench/gpu_validate_batching.py --model "$model" --device cuda --db "$db" \
  --out "$out/validate_batching.json" --calibrate --window-s "$validate_s" --skip "$skip" >> "$log" 2>&1
say "validate rc=$?"

# (a) + (d): the server with the stored calibration, then the sweep.
port=8765
start_serve $port "$out/serve_log.txt" 180 --backend vllm --device cuda --model "$model" --db "$db" \
  --idle-period 5 --max-num-seqs 128
say "server up? $(health_of $port)"
levels=$(fit_levels $(( $(left) - 20 )) $sweep_levels)
say "sweep levels: ${levels:-none}"
if [ -n "$levels" ]; then
  timeout $(( $(left) - 10 )) python3 bench/load.py --server "http://127.0.0.1:$port" --mint-db "$db" \
    --levels "$levels" --out "$out/load_sweep.json" >> "$log" 2>&1
  say "sweep rc=$?"
fi
stop_serve
say "done"
