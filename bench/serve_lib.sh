# Sourced by the bench/gpu_*.sh scripts (never run): start `greentrack serve` in the background, wait for its
# /health, show it, stop it. The caller sets PYTHONPATH so that `python3 -m greentrack` finds the server.
# Usage:  source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
#         start_serve PORT LOG_FILE WAIT_S --backend vllm --model ...   # sets $server (its pid)
#         health_of PORT; stop_serve

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
