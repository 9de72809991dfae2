"""Data-parallel serving: one model replica per GPU group, each with its own engine process, meter and step ledger.

Place in the flow: ``serve.run`` opens the server's ``ReplicaSet`` (``open_replicas``). For ``greentrack serve
--data-parallel-size N`` it holds N pipelines (``pipeline.Pipeline``): replica r's vLLM engine core runs in a
process that sees only its GPUs (``CUDA_VISIBLE_DEVICES``: ordinals r·T … r·T+T−1 for a tensor parallel size T), its
energy monitor meters exactly those GPUs, its step ledger splits their energy among the requests it served and its
own idle time; all replicas share the one store. With one replica (the default) it is that pipeline alone.

Why not vLLM's data parallelism: vLLM balances its data-parallel engines in its asynchronous front end; the
synchronous ``LLMEngine`` that greentrack steps (to record every step) sends every request to the first engine,
and on two H200s the server hung at start (docs/benchmarks.md, 2026-11-27). Replicas of greentrack's own are
independent engines, so each GPU's energy is measured on its own counter and conservation holds per replica:
Σ its stored completions + its stored idle = its GPUs' counter delta (and so for the sum).

Routing (``acquire``): a developer's requests go to the replica that served them last, where the engine's prefix
cache holds their document (prefix caches are per engine), unless that replica has ``spill`` more requests in
flight than the least busy one; a developer seen for the first time goes to the least busy. Within a replica the
engine batches the requests admitted to it; the service's fair scheduler admits up to the replicas' summed
concurrency.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from greentrack.config import Settings
from greentrack.errors import BackendUnavailable, GreentrackError, UsageError

if TYPE_CHECKING:
    from greentrack.pipeline import Pipeline
    from greentrack.store import Store

log = logging.getLogger(__name__)

#: Developers whose last replica is remembered (the least recently seen are forgotten first).
MAX_DEVELOPERS = 4096


class ReplicaSet:
    """The server's pipelines, one per replica, and which replica each developer's requests go to. Thread-safe.

    ``spill``: how many more requests in flight a developer's replica may have than the least busy one before their
    request goes to the least busy one instead (default: a quarter of a replica's concurrency, at least 1).
    """

    def __init__(self, pipelines: Sequence[Pipeline], *, spill: int | None = None) -> None:
        if not pipelines:
            raise ValueError("a ReplicaSet needs at least one pipeline")
        self.pipelines = list(pipelines)
        self._slots = [backend_slots(p.backend) for p in self.pipelines]
        self.spill = max(1, min(self._slots) // 4) if spill is None else max(1, spill)
        self._in_flight = [0] * len(self.pipelines)
        self._served = [0] * len(self.pipelines)
        self._home: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.pipelines)

    @property
    def primary(self) -> Pipeline:
        """The first replica's pipeline: the settings, model and backend kind, the same for every replica."""
        return self.pipelines[0]

    @property
    def slots(self) -> int:
        """How many generations the replicas run at once, together."""
        return sum(self._slots)

    @property
    def devices(self) -> list[str]:
        return [p.backend.device for p in self.pipelines]

    def acquire(self, developer: str) -> int:
        """The replica for ``developer``'s next request, counted as in flight there until ``release``."""
        with self._lock:
            if len(self.pipelines) == 1:
                chosen = 0
            else:
                least = min(range(len(self._in_flight)), key=lambda i: (self._in_flight[i], self._served[i]))
                home = self._home.get(developer)
                if home is None:
                    chosen = least
                elif self._in_flight[home] - self._in_flight[least] > self.spill:
                    chosen = least  # the developer's replica is busy: served elsewhere, their home kept
                else:
                    chosen = home
                if home is None:
                    self._home[developer] = chosen
                self._home.move_to_end(developer)
                while len(self._home) > MAX_DEVELOPERS:
                    self._home.popitem(last=False)
            self._in_flight[chosen] += 1
            self._served[chosen] += 1
            return chosen

    def release(self, index: int) -> None:
        """A request that ``acquire`` sent to replica ``index`` left its engine."""
        with self._lock:
            self._in_flight[index] = max(0, self._in_flight[index] - 1)

    def in_flight(self) -> list[int]:
        with self._lock:
            return list(self._in_flight)

    def served(self) -> list[int]:
        """Requests sent to each replica so far."""
        with self._lock:
            return list(self._served)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica has stored the records handed to it so far."""
        for pipeline in self.pipelines:
            pipeline.drain(timeout_s)

    def close(self) -> None:
        """Close every replica (each stores its last idle window); the shared store last."""
        last = len(self.pipelines) - 1
        for i, pipeline in enumerate(self.pipelines):
            try:
                pipeline.close(close_store=i == last)
            except Exception as e:  # one replica's failure must not keep the others' records from the store
                log.warning("while closing replica %d: %s", i, e)


def backend_slots(backend: object) -> int:
    """How many generations the backend runs at once: its ``concurrency`` when it batches (vLLM: the engine's
    ``max_num_seqs``), else one."""
    if not getattr(backend, "batches", False):
        return 1
    concurrency = getattr(backend, "concurrency", 1)
    return max(1, int(concurrency)) if isinstance(concurrency, int) else 1


def replica_gpus(replicas: int, tensor_parallel_size: int) -> list[list[int]]:
    """Each replica's CUDA ordinals (this process's numbering): ``[[0], [1]]`` for 2 replicas of 1 GPU,
    ``[[0, 1], [2, 3]]`` for 2 of 2."""
    if replicas < 1 or tensor_parallel_size < 1:
        raise ValueError("replicas and the tensor parallel size are at least 1")
    return [list(range(r * tensor_parallel_size, (r + 1) * tensor_parallel_size)) for r in range(replicas)]


def open_replicas(
    settings: Settings,
    *,
    store: Store,
    replicas: int = 1,
    strict_device: bool = False,
    backend_kwargs: dict[str, Any] | None = None,
) -> ReplicaSet:
    """Open ``replicas`` pipelines on the shared ``store`` (one: the pipeline as ``open_pipeline`` opens it).

    More than one needs vLLM on GPUs with its engine core in a process of its own (``UsageError`` otherwise) and a
    meter with a counter on each (each replica's energy is split by its step ledger; ``GreentrackError`` without).
    Replicas load one after the other (each engine process is started with its GPUs in the environment); a replica
    that fails to load closes those already loaded. A replica with no calibration stored for its GPUs uses the first
    replica's where NVML names the same GPU model (``greentrack calibrate`` measures the first visible GPU).
    """
    from greentrack.pipeline import open_pipeline

    kwargs = dict(backend_kwargs or {})
    if replicas == 1:
        return ReplicaSet([open_pipeline(settings, store=store, strict_device=strict_device, backend_kwargs=kwargs)])
    check_replicas(settings, kwargs)
    pipelines: list[Pipeline] = []
    groups = replica_gpus(replicas, int(kwargs.get("tensor_parallel_size", 1) or 1))
    try:
        for r, gpus in enumerate(groups):
            log.info("loading replica %d of %d on cuda:%s", r + 1, replicas, ",".join(map(str, gpus)))
            try:
                pipeline = open_pipeline(settings, store=store, strict_device=strict_device,
                                         backend_kwargs={**kwargs, "gpus": gpus},
                                         calibration_device=_calibration_device(pipelines, groups[0], gpus))
            except BackendUnavailable as e:
                raise UsageError(f"--data-parallel-size {replicas}: replica {r}: {e}") from e
            pipelines.append(pipeline)
            if pipeline.ledger is None:
                raise GreentrackError(f"replica {r} on {pipeline.backend.device} has no energy counter "
                                      f"({pipeline.monitor.meter_name}): replicas are metered on their own GPUs")
    except BaseException:
        for pipeline in pipelines:
            try:
                pipeline.close(close_store=False)
            except Exception as e:  # pragma: no cover - best effort on the way out
                log.warning("while closing a replica: %s", e)
        raise
    return ReplicaSet(pipelines)


def _calibration_device(opened: Sequence[Pipeline], first: Sequence[int], gpus: Sequence[int]) -> str | None:
    """The first replica's device, whose stored calibration a later replica uses when none is stored for its own
    (``greentrack calibrate`` measures the first visible GPU), where NVML says their GPUs are the same model."""
    if not opened:
        return None
    from greentrack.energy.nvml import gpu_names

    mine, theirs = gpu_names(gpus), gpu_names(first)
    return opened[0].backend.device if mine and theirs and mine == theirs else None


def check_replicas(settings: Settings, backend_kwargs: dict[str, Any]) -> None:
    """A ``UsageError``, before anything loads, where replicas cannot run: not vLLM, its engine kept in this
    process, one GPU or the CPU asked for, or a vLLM build for CPUs (imports vLLM: a few seconds)."""
    from greentrack.engine.vllm_setup import import_vllm

    if (settings.backend or "").lower() != "vllm":
        raise UsageError("--data-parallel-size above 1 needs --backend vllm")
    if backend_kwargs.get("engine_process") is False:
        raise UsageError("--data-parallel-size above 1 runs each replica's engine in a process of its own: "
                         "drop --no-engine-process")
    device = (settings.device or "auto").lower()
    if device == "cpu":
        raise UsageError("--data-parallel-size above 1 needs GPUs: each replica runs on GPUs of its own and is "
                         "metered on them")
    if device.startswith("cuda:"):
        raise UsageError(f"--data-parallel-size above 1 places its replicas on the visible GPUs in order: not with "
                         f"--device {settings.device} (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    try:
        platform = import_vllm().device_type
    except BackendUnavailable as e:
        raise UsageError(f"--data-parallel-size above 1: {e}") from e
    if platform != "cuda":
        raise UsageError(f"--data-parallel-size above 1 needs GPUs: this vLLM build runs on {platform} (each "
                         "replica runs on GPUs of its own and is metered on them)")
