# Sourced by the bench/gpu_*.sh scripts (never run): their common start (environment, log, budget clock, model),
# start `greentrack serve` in the background, wait for its /health, show it, stop it, and fit load levels in a budget.
# Usage:  source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
#         bench_start OUT [BUDGET_S]; write_env; make_model; say TEXT; left
#         start_serve PORT LOG_FILE WAIT_S --backend vllm --model ...   # sets $server (its pid)
#         health_of PORT; stop_serve; fit_levels ROOM_S N:S...

# Start `python3 -m greentrack serve --port PORT <args>` with its output in LOG_FILE, then poll /health once a
# second until it answers, the server exits, or WAIT_S seconds pass (the caller checks with health_of).
start_serve() {
  local port=$1 log_file=$2 wait_s=$3
  shift 3
  python3 -m greentrack serve --port "$port" "$@" > "$log_file" 2>&1 &
  server=$!
  for _ in $(seq 1 "$wait_s"); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
}

# The first 300 bytes of the server's /health answer, or the error's last line.
health_of() {
  python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$1/health', timeout=5).read()[:300])" \
    2>&1 | tail -1
}

# Stop the server that start_serve started and wait for it to exit.
stop_serve() {
  kill -TERM "$server" 2>/dev/null
  wait "$server" 2>/dev/null
}

# The start every bench/gpu_*.sh shares: greentrack's environment (PYTHONPATH with the server, a cache folder, the
# developer), $out, $log (run_log.txt in it), and the clock that say and left read. BUDGET_S: GT_BUDGET_S, else this.
bench_start() {
  out=$1 t0=$SECONDS budget=${GT_BUDGET_S:-${2:-540}} log="$1/run_log.txt"
  mkdir -p "$out"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/server" XDG_CACHE_HOME=/tmp/gt-cache \
    GREENTRACK_DEVELOPER=gpu-bench@example.com PYTHONUNBUFFERED=1
}

# $out/env.txt: the GPU (name, driver, power limit, memory), torch / transformers / vLLM versions, cores, load.
write_env() {
  { nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv,noheader
    python3 -c "import torch, transformers, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)"
    nproc; uptime; } > "$out/env.txt" 2>&1
}

# A line in $log (and on stdout), stamped with the seconds since bench_start.
say() { echo "[$(( SECONDS - t0 ))s] $*" | tee -a "$log"; }

# Seconds left of the budget.
left() { echo $(( budget - (SECONDS - t0) )); }

# The random-weight model of Qwen2.5-Coder-1.5B's shape in $model (/tmp/qwen-shape), made once per machine.
make_model() {
  model=/tmp/qwen-shape
  [ -d "$model" ] || { say "making the model"; python3 bench/gpu_make_model.py "$model" >> "$log" 2>&1; }
}

# fit_levels ROOM_S N:S...: the load levels, in the order given, that fit in ROOM_S seconds (each costs its duration
# + ~5 s), comma-joined for bench/load.py --levels.
fit_levels() {
  local room=$1 levels="" level cost
  shift
  for level in "$@"; do
    cost=$(( ${level#*:} + 5 ))
    if [ $cost -le $room ]; then levels="${levels:+$levels,}$level"; room=$(( room - cost )); fi
  done
  echo "$levels"
}
