#!/usr/bin/env bash
# Issue 12 point 5: where the 95th percentile of keystroke → suggestion goes at 64 developers, server
# configurations side by side on one GPU. For each configuration (GT_CONFIGS: "name|extra serve flags" entries
# separated by ";"; default: the defaults, then a 1 ms GIL switch interval; earlier pairs in docs/benchmarks.md): start
# `greentrack serve --backend vllm` on a fresh database, run bench/load.py (line budgets, GT_LEVELS, default
# 64:45), stop it. load_<name>.json has each level's `breakdown` (client overhead, queue, prefill, decode, tokens of
# the slowest 5 %). On the device machine, after the two-call vLLM install (../shared/gpu-vllm/README.md):
#   source .vx/c2/install.sh && bash bench/gpu_p95.sh "$OUT"
# Files in $OUT: env.txt, run_log.txt, serve_<name>.txt, load_<name>.json, load_<name>.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 560
write_env
make_model || exit 1
port=8765
IFS=';' read -r -a configs <<< "${GT_CONFIGS:-default|;switch1ms|--switch-interval-ms 1}"
for entry in "${configs[@]}"; do
  name=${entry%%|*} flags=${entry#*|}
  levels=$(fit_levels $(( $(left) - 100 )) ${GT_LEVELS:-64:45})
  if [ -z "$levels" ]; then say "no time left for $name"; break; fi
  db=/tmp/gt-p95/$name.db
  rm -rf "/tmp/gt-p95/$name.db"*; mkdir -p /tmp/gt-p95
  # shellcheck disable=SC2086  # the flags are words
  start_serve $port "$out/serve_$name.txt" 150 --backend vllm --device cuda --model "$model" --db "$db" \
    --idle-period 5 --max-num-seqs 128 $flags
  say "$name ($flags): server up? $(health_of $port); $(grep -o 'async_scheduling[^,;)]*' "$out/serve_$name.txt" | head -1)"
  timeout $(( $(left) - 10 )) python3 bench/load.py --server "http://127.0.0.1:$port" --mint-db "$db" --budget line \
    --levels "$levels" --out "$out/load_$name.json" > "$out/load_$name.txt" 2>&1
  say "$name: load rc=$?; graphs: $(grep -ao 'Capturing CUDA graphs ([^)]*)' "$out/serve_$name.txt" | sort -u | tr '\n' ' ')"
  tail -6 "$out/load_$name.txt" | tee -a "$log"
  stop_serve
done
say "done"
