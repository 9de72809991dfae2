#!/usr/bin/env bash
# Build the greentrack extension and install it:
#  - into your VS Code (`code --install-extension`) when the `code` command exists;
#  - otherwise (a headless machine) into code-server 4.139.1 (cached under .cache/), started on
#    127.0.0.1 with the extension and the repository's examples/ folder open; the URL is printed.
# Records this repository's .venv/bin/python in ~/.config/greentrack/python, where the extension looks for
# an interpreter with greentrack installed (the greentrack.pythonPath setting still wins).
#
# Usage: scripts/vscode-install.sh [--code-server] [--port N] [--no-start] [--stop]
#   --code-server  use code-server even where `code` exists     --port N  (default 8080, or $GREENTRACK_PORT)
#   --no-start     install into code-server without starting it --stop    stop the code-server this script started
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
use_code_server=0
start=1
port="${GREENTRACK_PORT:-8080}"
RUN="$ROOT/.cache/code-server-run"
while (($#)); do
  case "$1" in
    --code-server) use_code_server=1 ;;
    --no-start) start=0 ;;
    --port) port="$2"; shift ;;
    --stop)
      if [[ -f "$RUN/pid" ]] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
        kill -- "-$(cat "$RUN/pid")" 2>/dev/null || kill "$(cat "$RUN/pid")"
        echo "vscode-install: stopped code-server (pid $(cat "$RUN/pid"))"
      else
        echo "vscode-install: no code-server started by this script is running"
      fi
      rm -f "$RUN/pid"
      exit 0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "vscode-install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

vsix="$("$ROOT/scripts/vscode-build.sh")"

# Where the extension finds greentrack without any setting.
if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c "import greentrack" 2>/dev/null; then
  conf="${XDG_CONFIG_HOME:-$HOME/.config}/greentrack"
  mkdir -p "$conf"
  echo "$ROOT/.venv/bin/python" > "$conf/python"
  echo "vscode-install: recorded $ROOT/.venv/bin/python in $conf/python"
else
  echo "vscode-install: warning: $ROOT/.venv has no greentrack yet (run scripts/setup.sh); the extension will ask" >&2
fi

if [[ $use_code_server -eq 0 ]] && command -v code >/dev/null; then
  code --install-extension "$vsix" --force
  echo "vscode-install: installed $vsix into VS Code. Open a Python file: the status bar shows the energy of each suggestion."
  exit 0
fi

node24="$("$ROOT/scripts/vscode-node24.sh")"
code_server="$("$ROOT/scripts/vscode-code-server.sh")"
export PATH="$node24/bin:$PATH"
data="$ROOT/.cache/code-server-data"
mkdir -p "$data/ud/User" "$data/ext" "$RUN"
if [[ ! -f "$data/ud/User/settings.json" ]]; then
  cat > "$data/ud/User/settings.json" <<JSON
{
  "telemetry.telemetryLevel": "off",
  "workbench.startupEditor": "none",
  "security.workspace.trust.enabled": false,
  "chat.disableAIFeatures": true,
  "workbench.secondarySideBar.defaultVisibility": "hidden",
  "extensions.autoUpdate": false,
  "update.mode": "none",
  "editor.inlineSuggest.enabled": true
}
JSON
fi
"$code_server" --user-data-dir "$data/ud" --extensions-dir "$data/ext" --force --install-extension "$vsix"
if [[ $start -eq 0 ]]; then
  echo "vscode-install: installed into code-server ($data); not started (--no-start)"
  exit 0
fi
if [[ -f "$RUN/pid" ]] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then
  echo "vscode-install: restarting code-server (pid $(cat "$RUN/pid"))"
  kill -- "-$(cat "$RUN/pid")" 2>/dev/null || true
  sleep 1
fi
folder="$ROOT/examples"
setsid "$code_server" --bind-addr "127.0.0.1:$port" --auth none --disable-telemetry --disable-update-check \
  --disable-workspace-trust --disable-getting-started-override \
  --user-data-dir "$data/ud" --extensions-dir "$data/ext" "$folder" > "$RUN/code-server.log" 2>&1 < /dev/null &
echo $! > "$RUN/pid"
for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    echo "vscode-install: code-server is running (log: $RUN/code-server.log; stop: scripts/vscode-install.sh --stop)"
    echo "Open: http://127.0.0.1:$port/?folder=$folder"
    exit 0
  fi
  sleep 0.2
done
echo "vscode-install: code-server did not come up; see $RUN/code-server.log" >&2
tail -20 "$RUN/code-server.log" >&2
exit 1
