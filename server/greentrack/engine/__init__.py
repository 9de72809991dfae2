"""The completion engine: model loading, prompts (FIM or prefix-only), stop rules, KV reuse, backends."""
