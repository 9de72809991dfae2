#!/usr/bin/env bash
# The main job on the embedded defaults, from a fresh machine: install, complete a sample file and show the
# energy of that completion, then build the VS Code extension and install it into VS Code (`code`), or, where
# there is none, into a local code-server on 127.0.0.1 serving completions from the embedded model.
# GREENTRACK_DEMO_NO_EDITOR=1 stops after the completion.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo
echo "== which energy meters work here"
.venv/bin/greentrack doctor --skip-model
echo
echo "== a completion of examples/shapes.py (line 16, column 15, 0-based) with its energy"
.venv/bin/greentrack complete examples/shapes.py --line 16 --col 15
if [ "${GREENTRACK_DEMO_NO_EDITOR:-0}" != "1" ]; then
  echo
  echo "== VS Code with the greentrack extension"
  bash scripts/vscode-install.sh
fi
