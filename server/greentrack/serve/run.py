"""Start ``greentrack serve``: check the binding, load the engine and meters once, serve with uvicorn, shut down
cleanly.

Place in the flow: the ``serve`` command (``serve.cli``) calls ``serve``. Order: a non-loopback host without
tokens is refused before anything loads; then the pipeline (model, energy monitor, store) opens, the app is
built and uvicorn runs until SIGTERM/SIGINT. uvicorn then stops accepting connections and waits up to
``graceful_s`` for in-flight requests; past that it cancels them (their generations stop within one step and
are stored as ``cancelled``). Afterwards the service cancels what still waits, lets the running generation
finish, accounts the last idle period and drains the pipeline's record writer, so nothing committed is lost.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from greentrack.config import Settings
from greentrack.errors import StoreError, UsageError
from greentrack.serve.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_READ_TIMEOUT_S, BodyLimit

log = logging.getLogger("greentrack.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and its limits. Units: s, bytes."""

    host: str = "127.0.0.1"
    port: int = 8765
    idle_period_s: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    keep_alive_s: float = 5.0
    graceful_s: float = 10.0
    max_connections: int = 256
    max_queued_per_developer: int = 16
    strict_device: bool = False
    #: vLLM only: GPUs per model replica (tensor parallel), replicas (data parallel: greentrack's own, one engine
    #: process per replica, ``serve.replicas``), requests batched at most per replica, async scheduling (None: vLLM's
    #: own choice).
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int | None = None
    async_scheduling: bool | None = None
    #: vLLM only: the engine core in a process of its own, with its own GIL (``--engine-process``; None: where vLLM
    #: runs on GPUs).
    engine_process: bool | None = None
    #: vLLM only: more ``EngineArgs`` keywords (``--engine-arg KEY=VALUE``), applied over greentrack's defaults.
    engine_kwargs: tuple[tuple[str, Any], ...] = ()
    #: How long a Python thread holds the GIL before another one waiting gets it (``sys.setswitchinterval``;
    #: None: Python's 5 ms). The in-process engine thread and the HTTP threads take turns on one GIL.
    switch_interval_s: float | None = None

    def backend_kwargs(self, backend: str) -> dict[str, Any]:
        """What the vLLM backend gets (``engine.vllm_setup.engine_args``); a ``UsageError`` for the
        transformers backend with parallel sizes."""
        if backend != "vllm":
            if (self.tensor_parallel_size > 1 or self.data_parallel_size > 1 or self.max_num_seqs is not None
                    or self.async_scheduling is not None or self.engine_kwargs or self.engine_process is not None):
                raise UsageError("--tensor-parallel-size, --data-parallel-size, --max-num-seqs, "
                                 "--async-scheduling/--no-async-scheduling, --[no-]engine-process and --engine-arg "
                                 "need --backend vllm")
            return {}
        kwargs: dict[str, Any] = {}
        if self.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = self.tensor_parallel_size
        if self.data_parallel_size > 1 and self.engine_process is False:
            raise UsageError("--data-parallel-size above 1 runs each replica's engine in a process of its own: "
                             "drop --no-engine-process")
        if self.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs
        if self.async_scheduling is not None:
            kwargs["async_scheduling"] = self.async_scheduling
        kwargs["engine_process"] = self.engine_process
        if self.engine_kwargs:
            kwargs["engine_kwargs"] = dict(self.engine_kwargs)
        return kwargs


def serve(settings: Settings, options: ServeOptions) -> None:
    """Run the server until a signal stops it. Raises ``UsageError`` for a refused binding, ``GreentrackError``
    for a model, meter or database that cannot be used (before listening)."""
    import uvicorn

    from greentrack.pipeline import open_store
    from greentrack.serve.app import build_app
    from greentrack.serve.auth import Authenticator, LockedStore, is_loopback
    from greentrack.serve.metrics import ServerMetrics
    from greentrack.serve.replicas import check_replicas, open_replicas
    from greentrack.serve.scheduler import FairScheduler
    from greentrack.serve.service import CompletionService

    backend_kwargs = options.backend_kwargs(settings.backend)  # refused before anything loads
    if options.data_parallel_size > 1:
        check_replicas(settings, backend_kwargs)
    if options.switch_interval_s is not None:
        sys.setswitchinterval(options.switch_interval_s)
    loopback = is_loopback(options.host)
    try:
        store = open_store(settings)
    except OSError as e:
        raise StoreError(f"cannot open the database {settings.db_path}: {e}") from e
    if not loopback and not store.has_tokens():
        store.close()
        raise UsageError(f"refusing to serve on {options.host} without tokens: anyone could use it. Issue one per "
                         f"developer first (`greentrack token add EMAIL --db {settings.db_path}`), or bind 127.0.0.1")
    replicas = open_replicas(settings, store=store, replicas=options.data_parallel_size,
                             strict_device=options.strict_device, backend_kwargs=backend_kwargs)
    pipeline = replicas.primary
    # The pipeline's own Store: a second Store on the same file in this process would drop SQLite's POSIX locks
    # when it closes its file (fcntl locks are per process), and another process could then delete the WAL.
    own_store = LockedStore(store)
    metrics = ServerMetrics()
    service = CompletionService(
        replicas, own_store, metrics, idle_period_s=options.idle_period_s,
        scheduler=FairScheduler(max_queued_per_developer=options.max_queued_per_developer, slots=replicas.slots),
    )
    auth = Authenticator(own_store, local_developer=settings.developer, loopback=loopback)
    app = BodyLimit(build_app(service, auth), max_body_bytes=options.max_body_bytes,
                    read_timeout_s=options.body_timeout_s, on_reject=metrics.observe_error)
    config = uvicorn.Config(
        app, host=options.host, port=options.port, log_config=None, access_log=True, lifespan="on",
        timeout_keep_alive=int(max(1, options.keep_alive_s)), timeout_graceful_shutdown=int(options.graceful_s),
        limit_concurrency=options.max_connections, h11_max_incomplete_event_size=64 * 1024,
        server_header=False,
    )
    who = "tokens required" if store.has_tokens() else f"no tokens: serving {settings.developer} on loopback"
    where = " + ".join(replicas.devices)
    meters = " + ".join(p.monitor.meter_name for p in replicas.pipelines)
    log.info("serving %s (%s on %s, %d at once; energy: %s%s) on http://%s:%d (%s)", pipeline.backend.model_id,
             pipeline.backend.name, where, service.scheduler.slots, meters,
             ", by engine step" if pipeline.ledger is not None else "", options.host, options.port, who)
    try:
        uvicorn.Server(config).run()  # the app's lifespan closes the service on a signal
    finally:
        service.close()  # when uvicorn could not start (port taken): nothing was served
        log.info("stopped")
