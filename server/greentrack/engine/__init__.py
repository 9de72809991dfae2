"""The completion engine: model loading, prompts (FIM or prefix-only), stop rules, KV reuse, backends.

``loading`` (model name → safetensors folder → model on a device), ``prompt``, ``stops`` and ``tokenizer`` (no
torch, backend-independent), ``generation`` (one request's state: healed text, stop and budget decisions,
spans, the ``EngineResult``; both backends use it), ``runners`` (KV caches, CUDA-graph decode step),
``transformers_backend`` (the default ``CompletionBackend``), ``vllm_backend`` (the optional one, with
``vllm_setup``, ``vllm_engine``, ``vllm_metrics``, ``vllm_healing``), ``factory.open_backend`` (settings → backend).
"""
