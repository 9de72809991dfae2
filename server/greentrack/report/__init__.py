"""Weekly per-developer sustainability summaries read from the store. Never imports ``lsp``.

Flow: ``command`` (what the CLI calls) → ``weeks`` (ISO weeks in the developer's zone) → ``query`` (SQL over one
or several database files) → ``figures`` + ``tips`` (the contract's JSON) → ``render`` / ``html`` (formats).
Grid intensity comes from ``greentrack.carbon`` (at the bottom, shared with the pipeline); energy, power, CO2e and
time are written by ``greentrack.units``.
"""
