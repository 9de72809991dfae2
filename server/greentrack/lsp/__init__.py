"""The language server (pygls): thin handlers over ``greentrack.pipeline``."""
