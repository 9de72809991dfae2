#!/usr/bin/env bash
# Data parallelism (issue 12, point 6): `greentrack serve --backend vllm --data-parallel-size 2` (greentrack's own
# replicas: one engine process per GPU, each metered on its own GPU, serve.replicas) against one GPU, under the same
# simulated developers (bench/load.py), with each GPU's utilization and power sampled every 200 ms (nvidia-smi) to see
# that both GPUs serve. After each load: the server's /health (requests each replica served) and, from the database,
# each replica's stored completions and idle energy (by meter: one per GPU).
# On a 2-GPU device machine (kind nvidia-h100-x2 or nvidia-h200-x2), after the two-call vLLM install:
#   source .vx/c2/install.sh && bash bench/gpu_serve_dp2.sh "$OUT"
# GT_DP: the sizes to run, in order (default "2 1"); GT_LEVELS: bench/load.py levels (default "64:40 128:30").
# Files in $OUT: env.txt, serve_dp<N>.txt, load_dp<N>.json, smi_dp<N>.csv, health_dp<N>.json, run_log.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_start "${1:?output folder}" 540
write_env
make_model || exit 1
for dp in ${GT_DP:-2 1}; do
  levels=$(fit_levels $(( $(left) - 60 - 90 * dp )) ${GT_LEVELS:-64:40 128:30})
  if [ -z "$levels" ]; then say "no time left for DP=$dp"; break; fi
  db=/tmp/gt-dp$dp/serve.db; rm -rf /tmp/gt-dp$dp; mkdir -p /tmp/gt-dp$dp
  port=$(( 8770 + dp )); gpus=0; [ $dp = 2 ] && gpus=0,1
  start_serve $port "$out/serve_dp$dp.txt" $(( 150 * dp )) --backend vllm --device cuda --model "$model" \
    --db "$db" --idle-period 5 --max-num-seqs 128 --data-parallel-size $dp
  say "DP=$dp server: $(health_of $port)"
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,power.draw,memory.used --format=csv,noheader -lms 200 \
    > "$out/smi_dp$dp.csv" 2>&1 &
  smi=$!
  timeout $(( $(left) - 20 )) python3 bench/load.py --server "http://127.0.0.1:$port" --mint-db "$db" \
    --budget line --levels "$levels" --gpus $gpus --out "$out/load_dp$dp.json" > "$out/load_dp$dp.txt" 2>&1
  say "DP=$dp load rc=$?"
  kill $smi 2>/dev/null
  tail -4 "$out/load_dp$dp.txt" | tee -a "$log"
  python3 - "$out/smi_dp$dp.csv" <<'PY' | tee -a "$log"
import csv, statistics, sys
by = {}
for row in csv.reader(open(sys.argv[1])):
    try:
        by.setdefault(row[1].strip(), []).append((float(row[2].split()[0]), float(row[3].split()[0])))
    except (IndexError, ValueError):
        continue
for gpu, xs in sorted(by.items()):
    print(f"GPU {gpu}: utilization mean {statistics.mean(u for u, _ in xs):.1f} %, "
          f"power mean {statistics.mean(p for _, p in xs):.1f} W over {len(xs)} samples")
PY
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$port/health', timeout=5).read().decode())" \
    > "$out/health_dp$dp.json" 2>&1
  python3 - "$out/health_dp$dp.json" <<'PY' | tee -a "$log"
import json, sys
try:
    body = json.load(open(sys.argv[1]))
except ValueError as e:
    sys.exit(f"no /health: {e}")
for r in body.get("replicas", []):
    print(f"replica on {r['device']}: {r['served']} requests served, meter {r['meter']}")
PY
  grep -iE "error|Traceback|replica" "$out/serve_dp$dp.txt" | grep -v "Attempted to load" | head -8 | tee -a "$log"
  stop_serve
  python3 - "$db" <<'PY' | tee -a "$log"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for meter, n, j in db.execute("SELECT meter, COUNT(*), SUM(total_j) FROM completions GROUP BY meter"):
    idle = db.execute("SELECT COALESCE(SUM(energy_j), 0) FROM idle_energy WHERE meter = ?", (meter,)).fetchone()[0]
    print(f"{meter}: {n} completions {j:.1f} J, idle {idle:.1f} J")
PY
  [ "$(left)" -lt 120 ] && { say "no time left"; break; }
done
say "done"
