#!/usr/bin/env bash
# Ensure code-server (VS Code served to a browser) under .cache/code-server, built with Node 24.
# Used where no desktop `code` exists (headless machines) and by the end-to-end test.
# About 4-5 minutes on a fresh machine: ~12 native modules build from source because their prebuilt
# binaries live on a host that may be unreachable (`getaddrinfo ENOTFOUND` lines are expected).
# Prints the path of the code-server executable.
#
# Usage: CODE_SERVER=$(scripts/vscode-code-server.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GREENTRACK_CACHE:-$ROOT/.cache}"
VERSION="${CODE_SERVER_VERSION:-4.139.1}"
PREFIX="$CACHE/code-server"
BIN="$PREFIX/node_modules/.bin/code-server"

NODE24="$("$ROOT/scripts/vscode-node24.sh")"

if [[ -x "$BIN" ]] && [[ -f "$PREFIX/.installed-$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi

# System packages the native builds need (kerberos: libkrb5-dev). Only when root and missing.
need=()
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
command -v g++ >/dev/null 2>&1 || need+=(build-essential)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "vscode-code-server: apt-get install ${need[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >&2
  else
    echo "vscode-code-server: please install: ${need[*]} (e.g. sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

echo "vscode-code-server: installing code-server@$VERSION into $PREFIX (several minutes)" >&2
mkdir -p "$PREFIX"
[[ -f "$PREFIX/package.json" ]] || echo '{"name":"greentrack-code-server","private":true}' > "$PREFIX/package.json"
# Node 24 first on PATH; its headers for node-gyp (a ~/.npmrc `nodedir=/usr` would point at older headers).
export PATH="$NODE24/bin:$PATH"
export npm_config_nodedir="$NODE24"
(cd "$PREFIX" && npm install --no-audit --no-fund --foreground-scripts "code-server@$VERSION" >&2)
touch "$PREFIX/.installed-$VERSION"
echo "$BIN"
