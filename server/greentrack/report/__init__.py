"""Weekly per-developer sustainability summaries read from the store. Never imports ``lsp``."""
