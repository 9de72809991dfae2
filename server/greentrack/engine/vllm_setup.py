"""Setting up vLLM for the vLLM backend: its environment, its (optional) import, the engine's arguments.

Flow: ``vllm_backend.VllmBackend`` calls ``import_vllm`` first (which sets ``default_vllm_env`` where unset and
fails with one ``BackendUnavailable`` line naming the extra when vllm is missing or broken), then
``engine_device`` (the device asked for against the build's) and ``engine_args`` (what ``EngineArgs`` gets);
the engine thread builds the engine with ``build_engine`` (its core in this process or in its own);
once the engine is built, ``effective_async_scheduling`` reads what vLLM made of ``async_scheduling``.
vllm itself is imported only inside ``import_vllm``: without the extra this module, and the backend, still import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from greentrack.engine.loading import cpu_has_bf16
from greentrack.errors import BackendUnavailable

INSTALL_HINT = "pip install 'greentrack[vllm]'"


def cpu_list(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"`` (the syntax of ``VLLM_CPU_OMP_THREADS_BIND``)."""
    parts: list[str] = []
    ordered = sorted(cores)
    start = prev = ordered[0]
    for c in ordered[1:]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = c
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def default_vllm_env() -> dict[str, str]:
    """The environment the CPU engine needs, as defaults (a variable already set is never overridden).

    - ``VLLM_CPU_KVCACHE_SPACE=1``: 1 GiB of KV cache (vLLM-CPU's default takes a share of RAM).
    - ``OMP_NUM_THREADS`` / ``VLLM_CPU_OMP_THREADS_BIND``: as the transformers backend, one core left for the
      editor and the language server (``OMP_NUM_THREADS``, else ``GREENTRACK_THREADS``, overrides), bound to the
      first usable cores. On
      this project's 2-core machine with other jobs running, 2 threads made a cold 1k-token completion ~10x
      slower than 1 thread (9.5 s vs 0.9 s: OpenMP threads wait on each other at every barrier when one is
      descheduled), so 2 cores → 1 thread, bound to core 0.
    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process: no spawned child (so no
      ``if __name__ == "__main__"`` guard is needed by callers), one clock, abort takes effect at the next step.
      (``build_engine`` with ``own_process_env`` starts it in its own process whatever this says.)
    - ``VLLM_LOGGING_STREAM=ext://sys.stderr``, ``VLLM_LOGGING_LEVEL=WARNING``: stdout is the language server's
      channel; ``VLLM_NO_USAGE_STATS=1``: nothing leaves the machine.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = list(range(os.cpu_count() or 1))
    # OpenMP reads OMP_NUM_THREADS whatever we do: when it is set, the bind list follows it
    wanted = os.environ.get("OMP_NUM_THREADS", "") or os.environ.get("GREENTRACK_THREADS", "")
    threads = int(wanted) if wanted.isdigit() and int(wanted) > 0 else max(1, len(cores) - 1)
    use = cores[: max(1, min(threads, len(cores)))]
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": cpu_list(use),
        "OMP_NUM_THREADS": str(len(use)),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def apply_default_env() -> dict[str, str]:
    """Set each of ``default_vllm_env()`` that is unset; returns what was set. Call before importing vllm."""
    applied: dict[str, str] = {}
    for key, value in default_vllm_env().items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


@dataclass(frozen=True)
class VllmModules:
    """The parts of vLLM the backend uses (imported once, lazily)."""

    version: str
    EngineArgs: Any
    LLMEngine: Any
    SamplingParams: Any
    RequestOutputKind: Any
    device_type: str


def import_vllm() -> VllmModules:
    """Import vLLM, or ``BackendUnavailable`` naming the extra to install (and the import's own error)."""
    applied = apply_default_env()
    try:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.llm_engine import LLMEngine
    except ImportError as e:
        raise BackendUnavailable(
            f"the vllm backend is not installed ({e}): run `{INSTALL_HINT}` (on CPU-only machines: "
            "scripts/install-vllm.sh, which keeps the CPU torch)"
        ) from e
    except Exception as e:  # a broken install: e.g. CUDA-only torchvision next to a CPU torch
        raise BackendUnavailable(
            f"vllm is installed but cannot be imported ({type(e).__name__}: {e}); reinstall it with "
            f"`{INSTALL_HINT}` or scripts/install-vllm.sh"
        ) from e
    if "VLLM_LOGGING_LEVEL" in applied:
        # one warning per tensor when the converted float32 weights are loaded as bfloat16: expected, not news
        logging.getLogger("vllm.model_executor.models.utils").setLevel(logging.ERROR)
    try:
        version = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        try:
            version = metadata.version("vllm")
        except metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
            version = "unknown"
    return VllmModules(version, EngineArgs, LLMEngine, SamplingParams, RequestOutputKind,
                       str(getattr(current_platform, "device_type", "cpu")))


def engine_device(device: str, vl: VllmModules, *, gpus: int = 1, ordinals: Sequence[int] | None = None) -> str:
    """The backend's device name for the ``device`` asked for ("auto", "cpu", "cuda:N"), or
    ``BackendUnavailable`` when this vLLM build runs elsewhere. On GPUs it names every GPU the engine uses:
    vLLM takes the first ``gpus`` (its tensor parallel size) CUDA ordinals, so ``cuda:0,1`` for two, or those of
    ``ordinals`` (a replica's engine process sees only them: ``engine_process_gpus``); the energy monitor meters
    those (``pipeline._gpu_indices``; ``CUDA_VISIBLE_DEVICES`` maps them to NVML's indices)."""
    want = (device or "auto").lower()
    if want.startswith("cuda") and vl.device_type != "cuda":
        raise BackendUnavailable(
            f"device {device} requested, but this vLLM build ({vl.version}) runs on {vl.device_type} only; "
            "install the CUDA build of vllm, or use --backend transformers"
        )
    if want == "cpu" and vl.device_type != "cpu":
        raise BackendUnavailable(f"device cpu requested, but this vLLM build runs on {vl.device_type}")
    if vl.device_type != "cuda":
        return vl.device_type
    used = list(ordinals) if ordinals is not None else list(range(max(1, gpus)))
    return "cuda:" + ",".join(str(i) for i in used)


def engine_process_gpus(ordinals: Sequence[int]) -> dict[str, str]:
    """The environment that makes an engine process see only the GPUs of this process's CUDA ``ordinals`` (its
    ``cuda:0`` is the first of them): ``CUDA_VISIBLE_DEVICES`` with this process's own entries for them (an index
    or a ``GPU-…`` UUID) when it has the variable, else the ordinals. vLLM's own data-parallel engines are placed
    the same way. A ``BackendUnavailable`` for an ordinal this process does not see."""
    from greentrack.energy.nvml import cuda_to_nvml_ids
    from greentrack.errors import MeterUnavailable

    if not ordinals or any(i < 0 for i in ordinals):
        raise BackendUnavailable(f"no GPUs given for an engine process: {list(ordinals)}")
    try:  # the same mapping the monitor meters the replica's GPUs through
        ids = cuda_to_nvml_ids(ordinals)
    except MeterUnavailable as e:
        raise BackendUnavailable(str(e)) from e
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ids)}


#: On GPUs, steps of up to this many tokens run as CUDA graphs. vLLM's default is 2 × max_num_seqs (16 for the
#: language server's engine, 256 for ``serve``'s 128); a larger step, e.g. a keystroke's prefill of a few dozen new
#: tokens beside the running decodes, launches each layer's kernels from Python (cProfile on an H200: ~56 Triton
#: launches, 84 matmuls and 28 attention calls per prefill request). Side by side on one H200 (docs/benchmarks.md,
#: 2026-11-27), 64 developers on ``serve``: keystroke p95 438 → 352 ms, the server's p95 287 → 202 ms, prefill p50
#: 31.9 → 17.7 ms. ``--engine-arg compilation_config=…`` replaces it.
GRAPH_CAPTURE_TOKENS = 1024


#: Why vLLM's own data parallelism (``--engine-arg data_parallel_size=N``) is refused. vLLM balances data-parallel
#: engines in its asynchronous front end (``AsyncLLM``); greentrack's engine thread drives the synchronous
#: ``LLMEngine``, whose client sends every request to the first engine while the others wait on it: on two H200s
#: (docs/benchmarks.md, 2026-11-27) the server never answered its first request. ``greentrack serve
#: --data-parallel-size N`` runs N replicas of its own instead (``serve.replicas``), each metered on its own GPUs.
DATA_PARALLEL_REFUSED = (
    "vLLM's own data parallelism (data_parallel_size above 1) is not supported: it needs vLLM's asynchronous front "
    "end, and with greentrack's engine the server hung at start on two GPUs. Use `greentrack serve "
    "--data-parallel-size N` (one engine per GPU, each metered on its own GPU) or --tensor-parallel-size"
)


def engine_args(
    folder: Path,
    vl: VllmModules,
    *,
    max_model_len: int,
    max_num_seqs: int,
    enforce_eager: bool | None,
    dtype: str | None,
    logits_processors: Sequence[type],
    engine_kwargs: Mapping[str, Any] | None,
    tensor_parallel_size: int = 1,
    async_scheduling: bool | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``EngineArgs``: prefix caching on, greedy and seeded, per-request stats on.
    ``tensor_parallel_size`` (``greentrack serve --tensor-parallel-size N``) is passed when above 1: the engine then
    uses N GPUs; vLLM's ``data_parallel_size`` above 1 is refused (``DATA_PARALLEL_REFUSED``). ``async_scheduling``
    (``--async-scheduling/--no-async-scheduling``) is passed when set; unset, vLLM decides (on with the in-process
    executor of vLLM on GPUs; the CPU platform turns it off whatever is asked: ``effective_async_scheduling``).

    Defaults: on CPU bfloat16 where the CPU has bf16 instructions (else float32) and eager mode; on GPUs the
    model's dtype, compiled, and CUDA graphs for steps of up to ``GRAPH_CAPTURE_TOKENS``. ``engine_kwargs``
    override, except the stats (no stats: no spans).
    """
    if dtype is None:
        dtype = "auto" if vl.device_type == "cuda" else ("bfloat16" if cpu_has_bf16() else "float32")
    kwargs: dict[str, Any] = {
        "model": str(folder),
        "tokenizer": str(folder),
        "dtype": dtype,
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "enable_prefix_caching": True,
        "disable_log_stats": False,  # per-request metrics (RequestStateStats) need stats on
        "enforce_eager": vl.device_type == "cpu" if enforce_eager is None else enforce_eager,
        "seed": 0,
    }
    if tensor_parallel_size < 1:
        raise ValueError("the tensor parallel size is at least 1")
    if tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    if async_scheduling is not None:
        kwargs["async_scheduling"] = async_scheduling
    if logits_processors:
        kwargs["logits_processors"] = list(logits_processors)
    if vl.device_type == "cuda" and not kwargs["enforce_eager"]:
        kwargs["compilation_config"] = {"max_cudagraph_capture_size": GRAPH_CAPTURE_TOKENS}
    kwargs.update(engine_kwargs or {})
    if int(kwargs.get("data_parallel_size", 1) or 1) > 1:  # asked by --engine-arg
        raise BackendUnavailable(DATA_PARALLEL_REFUSED)
    kwargs["disable_log_stats"] = False  # without stats, vLLM keeps no per-request timestamps: no spans
    return kwargs


def build_engine(vl: VllmModules, args: Any, own_process_env: Mapping[str, str] | None = None) -> Any:
    """vLLM's ``LLMEngine`` from ``EngineArgs``: its engine core in this process (``own_process_env`` None), else in
    a process of its own (vLLM's multiprocessing layout) whose scheduler records every step and sends it over
    ``vllm_step_channel`` (``own_process_env``: where to, set in the environment while vLLM starts that process).
    The recording scheduler subclasses the one vLLM settled on (async scheduling or not), so it is named only once
    the config is made."""
    if own_process_env is None:
        return vl.LLMEngine.from_engine_args(args)
    from greentrack.engine.vllm_step_scheduler import scheduler_name

    try:
        from vllm.v1.executor import Executor
    except ImportError:  # pragma: no cover - older vLLM
        from vllm.v1.executor.abstract import Executor
    config = args.create_engine_config()
    config.scheduler_config.scheduler_cls = scheduler_name(bool(config.scheduler_config.async_scheduling))
    saved = {key: os.environ.get(key) for key in own_process_env}
    os.environ.update(own_process_env)
    try:
        return vl.LLMEngine(vllm_config=config, executor_class=Executor.get_class(config), log_stats=True,
                            multiprocess_mode=True)
    finally:  # the engine process has its copy: a later engine of this process must not find it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def engine_gpus(kwargs: Mapping[str, Any]) -> int:
    """How many GPUs an engine with these ``EngineArgs`` keywords uses: its tensor parallel size (vLLM's data
    parallelism is refused by ``engine_args``)."""
    return int(kwargs.get("tensor_parallel_size", 1) or 1)


def effective_async_scheduling(engine: Any) -> bool | None:
    """Whether the built ``LLMEngine`` schedules asynchronously (a batch queue: the next batch is scheduled while
    the previous one runs), as vLLM settled it after its platform's hook; None when this vLLM keeps it elsewhere.
    Read from ``engine.vllm_config.scheduler_config`` (vLLM 0.26 and 0.32), else from the in-process engine core."""
    scheduler_config = getattr(getattr(engine, "vllm_config", None), "scheduler_config", None)
    value = getattr(scheduler_config, "async_scheduling", None)
    if value is None:
        core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
        value = getattr(core, "async_scheduling", None)
    return value if isinstance(value, bool) else None
