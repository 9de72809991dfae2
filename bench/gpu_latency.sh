#!/usr/bin/env bash
# Keystroke → suggestion on one GPU with suggestions as long as a real model's (issues 12 and 14): one
# `greentrack serve --backend vllm`, then `greentrack bench --server` (one developer, the default 150 ms debounce and
# a short one) and the team sweep (`bench/load.py`), every request with the token budget of the line the developer
# types next (`--budget line`: the random-weight model never stops at a line end). On the device machine, after the
# two-call vLLM install (../shared/gpu-vllm/README.md), from the repo root:
#   source .vx/c2/install.sh && bash bench/gpu_latency.sh "$OUT"
# Budget: GT_BUDGET_S (default 540 s from this script's start). Files in $OUT: env.txt, serve_log.txt, run_log.txt,
# bench_150.json, bench_short.json, load_sweep.json.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 540
write_env
db=/tmp/gt-lat/serve.db
mkdir -p /tmp/gt-lat
make_model || exit 1
port=8765
url="http://127.0.0.1:$port"
start_serve $port "$out/serve_log.txt" 180 --backend vllm --device cuda --model "$model" --db "$db" \
  --idle-period 5 --max-num-seqs 128
say "server up? $(health_of $port)"

# One developer (no tokens exist yet: the loopback server serves its own user): default debounce, then a short one.
short=${GT_SHORT_DEBOUNCE_MS:-30}
for run in "150 bench_150.json" "$short bench_short.json"; do
  set -- $run
  timeout $(( $(left) > 300 ? 110 : 60 )) python3 -m greentrack bench --server "$url" --files 3 --budget line \
    --debounce-ms "$1" --json > "$out/$2" 2>> "$log"
  say "bench --debounce-ms $1 rc=$?: $(python3 -c "import json,sys; r=json.load(open('$out/$2'))
c=r['configurations'][0]
print(c['latency_ms'], {k: c.get(k) for k in ('requests', 'completions', 'shown')}, c['tokens']['generated'])" 2>&1 | tail -1)"
done

# The team sweep: levels in priority order, as many as fit.
levels=$(fit_levels $(( $(left) - 25 )) ${GT_LEVELS:-64:45 1:30 16:30 128:30})
say "sweep levels: ${levels:-none}"
if [ -n "$levels" ]; then
  timeout $(( $(left) - 10 )) python3 bench/load.py --server "$url" --mint-db "$db" --budget line \
    --levels "$levels" --out "$out/load_sweep.json" >> "$log" 2>&1
  say "sweep rc=$?"
  tail -8 "$log"
fi
stop_serve
say "done"
