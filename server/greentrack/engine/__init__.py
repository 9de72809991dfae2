"""The completion engine: model loading, prompts (FIM or prefix-only), stop rules, KV reuse, backends.

``loading`` (model name → safetensors folder → model on a device), ``prompt`` and ``stops`` (pure,
backend-independent: the vLLM backend uses them too), ``runners`` (KV caches, CUDA-graph decode step),
``transformers_backend`` (the default ``CompletionBackend``), ``factory.open_backend`` (settings → backend).
"""
