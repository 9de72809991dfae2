#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine of this kind and runs every test, end-to-end last:
# lint and types (ruff, mypy --strict, tsc --strict), the extension's unit tests, then one pytest run
# (unit → meters → store/report → engine → vLLM → language server → real VS Code). CI (.ci/run) runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "Python environment"
bash scripts/setup.sh --dev

if [ -f scripts/install-vllm.sh ]; then
  step "vLLM extra (CPU build)"
  bash scripts/install-vllm.sh .venv
fi

step "browser and VS Code for the end-to-end tests"
if [ -f scripts/vscode-deps.sh ]; then bash scripts/vscode-deps.sh; fi

step "lint and types"
.venv/bin/ruff check server tests bench
.venv/bin/mypy
if [ -f package.json ]; then
  step "extension: build, tsc --strict, unit tests"
  bash scripts/vscode-build.sh
  npm test --silent
fi

step "pytest"
.venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"
