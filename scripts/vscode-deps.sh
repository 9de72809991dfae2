#!/usr/bin/env bash
# Everything the real-VS-Code end-to-end test needs, cached under .cache/ (idempotent; ~4-5 min the first
# time on a fresh machine, seconds afterwards): Debian's Chromium (apt, when missing and root), Node 24,
# code-server 4.139.1 (native modules built from source), and the npm packages (playwright-core) via
# scripts/vscode-build.sh. Never `npx playwright install`: Playwright drives the system Chromium.
# Prints KEY=VALUE lines: NODE24_BIN, CODE_SERVER, CHROMIUM, VSIX.
#
# Usage: scripts/vscode-deps.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

chromium="${CHROMIUM:-}"
if [[ -z "$chromium" ]]; then
  chromium="$(command -v chromium || command -v chromium-browser || true)"
fi
if [[ -z "$chromium" ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "vscode-deps: apt-get install chromium" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >&2
    chromium="$(command -v chromium)"
  else
    echo "vscode-deps: Chromium is missing: sudo apt-get install -y chromium (or set CHROMIUM=/path/to/chrome)" >&2
    exit 1
  fi
fi

node24="$("$ROOT/scripts/vscode-node24.sh")"
code_server="$("$ROOT/scripts/vscode-code-server.sh")"
vsix="$("$ROOT/scripts/vscode-build.sh")"

echo "NODE24_BIN=$node24/bin/node"
echo "CODE_SERVER=$code_server"
echo "CHROMIUM=$chromium"
echo "VSIX=$vsix"
