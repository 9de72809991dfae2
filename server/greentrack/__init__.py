"""greentrack: local-LLM code completions with the energy of every suggestion measured per phase.

Flow: a keystroke (``lsp``) becomes a prompt (``engine.prompt``), the engine runs the prefill and decode
phases (``engine``), the meters attribute energy to those phases (``energy``), the store keeps the
completion (``store``) and the report reads it back (``report``). ``pipeline`` is where the stages meet.
"""

__version__ = "0.1.0"
