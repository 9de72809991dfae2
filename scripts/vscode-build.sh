#!/usr/bin/env bash
# Build the VS Code extension: npm ci, tsc (type check; extension/out for the unit tests and the end-to-end
# test's formatEnergy), esbuild (extension/dist/extension.js, the one file the .vsix runs), vsce package →
# greentrack.vsix at the repository root.
# Runs with Node 24 from .cache/node24 (@vscode/vsce 4.x needs Node >= 22; the system may have Node 20).
# Prints the .vsix path.
#
# Usage: scripts/vscode-build.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE24="$("$ROOT/scripts/vscode-node24.sh")"
export PATH="$NODE24/bin:$PATH"
export npm_config_nodedir="$NODE24"
cd "$ROOT"

# npm ci only when package-lock.json changed since the last install (it wipes node_modules).
stamp="node_modules/.greentrack-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$want" ]]; then
  echo "vscode-build: npm ci" >&2
  npm ci --no-audit --no-fund >&2
  echo "$want" > "$stamp"
fi

# Up to date: a .vsix newer than every input (sources, manifest, lock file, README) is kept.
if [[ -f greentrack.vsix && -f extension/dist/extension.js && -f extension/out/src/format.js \
      && -z "${GREENTRACK_REBUILD:-}" ]] && \
   [[ -z "$(find package.json package-lock.json tsconfig.json .vscodeignore extension/src README.md LICENSE \
            -newer greentrack.vsix 2>/dev/null | head -1)" ]]; then
  echo "vscode-build: greentrack.vsix is up to date (GREENTRACK_REBUILD=1 forces a build)" >&2
  echo "$ROOT/greentrack.vsix"
  exit 0
fi

echo "vscode-build: tsc + esbuild + vsce package" >&2  # vsce runs `vscode:prepublish` (compile, bundle) first
rm -f greentrack.vsix
# --skip-license: the license is named in package.json; a LICENSE file is packed when present.
# --no-dependencies: vscode-languageclient is in the bundle; the .vsix carries no node_modules.
./node_modules/.bin/vsce package --out greentrack.vsix --allow-missing-repository --skip-license --no-dependencies \
  --allow-star-activation --no-rewrite-relative-links >&2 </dev/null
echo "$ROOT/greentrack.vsix"
