"""``greentrack serve``: one completion server for a machine or a team, metered per developer.

Place in the flow: HTTP requests (``app``, thin handlers) are authenticated (``auth``: bearer tokens stored
hashed), become ``CompletionRequest``s (``models``), wait their turn (``scheduler``: one generation at a time,
round-robin across developers) and run through the same ``Pipeline`` as the language server; the record,
attributed off the critical path, is stored with the token's developer. ``idle`` meters the server's energy
between completions, ``metrics`` exposes Prometheus counters, ``run`` starts uvicorn and ``cli`` holds the
``serve`` and ``token`` commands. The HTTP API is specified in ``docs/interfaces.md`` ("HTTP API").
"""
