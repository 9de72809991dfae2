#!/usr/bin/env bash
# vLLM on the GPU through greentrack's own backend: start-up, prefix caching, overlapping requests, and the command
# line with --backend vllm, on a random-weight model of Qwen2.5-Coder-1.5B's shape. Run on the device machine after
# the two-call vLLM install (../shared/gpu-vllm/README.md), from the repo root:
#   source .vx/c2/install.sh && bash bench/gpu_vllm_smoke.sh "$OUT"
set -uo pipefail
out="${1:?output folder}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}server" XDG_CACHE_HOME=/tmp/gt-cache GREENTRACK_DEVELOPER=gpu-bench@example.com
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers, vllm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__)" | tee -a "$out/gpu.txt"
model=/tmp/qwen-shape
[ -d "$model" ] || python3 bench/gpu_make_model.py "$model" || exit 1
python3 bench/vllm_cpu.py --model "$model" --device cuda --eager 0 --repeats 3 > "$out/vllm_backend.json"; echo "vllm_cpu.py rc=$?"
tail -c 3000 "$out/vllm_backend.json"
for i in 1 2; do
  python3 -m greentrack complete examples/shapes.py --line 16 --col 15 --json --max-tokens 32 --backend vllm \
    --device cuda --model "$model" --db "$out/gpu.db" >> "$out/complete_vllm.jsonl"; echo "complete rc=$?"
done
cat "$out/complete_vllm.jsonl"
