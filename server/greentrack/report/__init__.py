"""Weekly per-developer sustainability summaries read from the store. Never imports ``lsp``.

Flow: ``command`` (what the CLI calls) → ``weeks`` (ISO weeks in the developer's zone) → ``query`` (SQL over one
or several database files) → ``figures`` + ``tips`` (the contract's JSON) → ``render`` / ``html`` (formats).
``carbon`` turns a country code into grid intensity with CodeCarbon's data (``data/``).
"""
