"""The transformers backend: one model in this process, a greedy decode loop of its own, exact phase spans.

Flow of ``complete``: prompt (``prompt.PromptBuilder``: window, FIM or prefix-only, token healing) → runner
``begin`` (KV reuse: the longest common token prefix with what the cache holds) → prefill (the rest of the
prompt; ends when the first token exists, after a device synchronize) → decode loop (one token per step;
the ``CancelToken``, the stop rules of ``stops`` and the token/time budgets checked at every step) →
``EngineResult`` with the cleaned text and ``PhaseSpan``s for the energy layer. No energy counter is read here.

A hand-written loop rather than ``generate``: cancellation, stop rules and phase boundaries are then exact,
and on CUDA the decode step is a captured CUDA graph (``runners.StaticRunner``). On the CPU, a llama GGUF (the
embedded model) runs on the int4 engine of ``cpu_decode`` (``cpu_decode.CpuRunner``, preallocated KV cache);
other models on the transformers model (``runners.DynamicRunner``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from greentrack.config import EMBEDDED_MODEL, Settings
from greentrack.energy.types import PhaseSpan
from greentrack.engine.cpu_decode import CpuLlama, CpuRunner
from greentrack.engine.generation import GenerationState
from greentrack.engine.loading import LoadedModel, load_model, resolve_model
from greentrack.engine.prompt import Healer, Prompt, PromptBuilder, WindowStarts, build_healer
from greentrack.engine.runners import DynamicRunner, StaticRunner
from greentrack.engine.stops import StopContext, stop_context, stop_token_ids
from greentrack.engine.tokenizer import HFTokenizer
from greentrack.engine.types import CancelToken, CompletionRequest, EngineResult, Extras, StopReason
from greentrack.errors import BadInput

OnToken = Callable[[int, str], None]


@dataclass
class _DecodeLoop:
    """The decode loop's own state for one request (what ``GenerationState`` does not hold): the tokens
    generated, the token ids the runner's cache holds, the heal text not yet re-spelled, the last step's end."""

    heal_remaining: str
    healer: Healer | None
    cached_ids: list[int]
    gen: list[int] = field(default_factory=list)
    t_last_s: float = 0.0

    def allowed(self) -> list[int] | None:
        """The token ids the next token is picked from while healing; None: any."""
        return self.healer.allowed(self.heal_remaining) if self.healer is not None and self.heal_remaining else None


class TransformersBackend:
    """``CompletionBackend``: CPU (the int4 engine, or a transformers model with a DynamicCache per document) or
    CUDA (a transformers model, static cache + graph)."""

    name = "transformers"

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        device: str = "auto",
        *,
        dtype: str | None = None,
        cache: str = "auto",
        cuda_graph: bool = True,
        compile_step: bool | None = None,
        max_documents: int = 4,
        reuse: bool = True,
        stable_window: bool = True,
        stop_rules: bool = True,
        healing: bool = True,
        suffix_share: float | None = None,
        context_tokens: int = 1024,
        max_tokens: int = 64,
        loaded: LoadedModel | None = None,
        warmup: bool = True,
    ) -> None:
        self.model_id = model or EMBEDDED_MODEL
        self.loaded = loaded or load_model(resolve_model(self.model_id), device, dtype)
        self.torch_device = self.loaded.device
        self.device = str(self.torch_device)
        self.model = self.loaded.model
        self.tok = HFTokenizer(self.loaded.tokenizer)
        vocab: dict[str, int] = dict(self.loaded.tokenizer.get_vocab())
        self.prompts = PromptBuilder(
            self.tok, vocab, bos_ids=self.tok.bos_ids(), suffix_share=suffix_share, healing=healing
        )
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        self.stop_ids = stop_token_ids(vocab, eos_ids)
        self.reuse = reuse
        self.stable_window = stable_window
        self.stop_rules = stop_rules  # False: only EOS and the budgets end generation (benchmarks' baseline)
        self._healer: Healer | None = None
        self._window_starts = WindowStarts()
        self._lock = threading.Lock()
        if compile_step is None:  # opt-in: ~40 s of torch.compile at start-up for ~25% less energy per token
            compile_step = os.environ.get("GREENTRACK_COMPILE_DECODE", "") in ("1", "true", "yes")
        kind = cache if cache != "auto" else ("static" if self.torch_device.type == "cuda" else "dynamic")
        self.runner: DynamicRunner | StaticRunner | CpuRunner
        if isinstance(self.model, CpuLlama):  # the int4 CPU engine (loading.load_cpu_model)
            self.runner = CpuRunner(self.model, max_documents)
        elif kind == "static":
            limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 20)
            self.runner = StaticRunner(
                self.model, self.torch_device, min(limit, context_tokens + max_tokens + 64), cuda_graph,
                compile_step=compile_step,
            )
        else:
            self.runner = DynamicRunner(self.model, self.torch_device, max_documents)
        if warmup:
            self.warmup()

    def warmup(self) -> None:
        """First forwards are slow (kernel selection, oneDNN primitives, CUDA graph capture): pay that at load."""
        self.healer()  # decodes every token once (~0.5 s for 49k tokens)
        for n in (8, 64, 8):
            self.run_synthetic(n, 3, request_id="warmup")

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> TransformersBackend:
        return cls(
            settings.model, settings.device, context_tokens=settings.context_tokens,
            max_tokens=settings.max_tokens, **kwargs,
        )

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def dtype_name(self) -> str:
        """The weights' format: "int4" (the CPU engine), else the transformers model's dtype ("bfloat16", ...)."""
        return "int4" if isinstance(self.model, CpuLlama) else str(self.loaded.dtype).removeprefix("torch.")

    @property
    def fim_family(self) -> str | None:
        return self.prompts.fim.family if self.prompts.fim else None

    def healer(self) -> Healer:
        if self._healer is None:
            self._healer, _ = build_healer(self.loaded.tokenizer, self.stop_ids)
        return self._healer

    def _sync(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def _pick(self, logits: torch.Tensor, allowed: list[int] | None) -> int:
        if allowed:
            idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
            return int(allowed[int(torch.argmax(logits.index_select(0, idx)))])
        return int(torch.argmax(logits))

    # ------------------------------------------------------------------------------------------ completion

    def build_prompt(self, request: CompletionRequest) -> Prompt:
        prefer = self._window_starts.get(request.document_key) if self.stable_window else None
        prompt = self.prompts.build(request.text, request.offset, request.context_tokens, prefer)
        if self.stable_window:
            self._window_starts.remember(request.document_key, prompt.window.prefix_start)
        return prompt

    def complete(
        self, request: CompletionRequest, cancel: CancelToken | None = None, on_token: OnToken | None = None
    ) -> EngineResult:
        """Complete at the cursor. ``on_token(n, text)`` is called after each generated token (tests, streaming)."""
        cancel = cancel or CancelToken()
        started = time.monotonic()
        if request.max_tokens < 1:
            raise BadInput(f"max_tokens must be at least 1 (got {request.max_tokens})")
        with self._lock, torch.inference_mode():
            prompt = self.build_prompt(request)
            ctx = stop_context(prompt.window.prefix, prompt.window.suffix)
            return self._generate(request, prompt, ctx, cancel, on_token, started)

    def _generate(
        self,
        request: CompletionRequest,
        prompt: Prompt,
        ctx: StopContext,
        cancel: CancelToken,
        on_token: OnToken | None,
        started: float,
    ) -> EngineResult:
        ids = prompt.ids
        state = GenerationState(request, len(ids), ctx, started, prompt.heal_text, self.stop_rules)
        extras: Extras = {
            "mode": ctx.mode, "fim": self.fim_family, "heal_text": prompt.heal_text, "runner": self.runner.kind,
            "cuda_graph": self.runner.uses_graph, "dtype": self.dtype_name,
        }
        if cancel.cancelled:
            return state.cancelled_before_start(time.monotonic(), extras)
        if isinstance(self.runner, StaticRunner):
            self.runner.ensure_capacity(len(ids) + request.max_tokens + 1)
        doc_key = request.document_key if self.reuse else None
        reused = state.reused_prompt_tokens = self.runner.begin(doc_key, ids)
        heal_text = prompt.heal_text
        loop = _DecodeLoop(heal_remaining=heal_text, healer=self.healer() if heal_text else None, cached_ids=list(ids))
        token, t_prefill, t_first = self._prefill(ids, reused, loop, state)
        try:
            reason = self._decode(token, loop, state, cancel, on_token)
        finally:
            self._sync()
            t_end = time.monotonic()
            self.runner.end(doc_key, loop.cached_ids)
        t_decode_end = max(loop.t_last_s, t_first)
        self._finish_decode(loop.gen, reason, t_first, t_decode_end, state)
        extras.update({"cuda_graph": self.runner.uses_graph, "prefill_ms": (t_first - t_prefill) * 1e3,
                       "decode_ms": (t_decode_end - t_first) * 1e3})
        return state.result(reason, ended_s=t_end, extras=extras)

    def _prefill(
        self, ids: list[int], reused: int, loop: _DecodeLoop, state: GenerationState
    ) -> tuple[int, float, float]:
        """The prompt's tokens after the ``reused`` ones through the model, up to the first generated token
        (between device synchronizes, recorded as the prefill span): (first token, prefill start, its end)."""
        self._sync()
        t_prefill = time.monotonic()
        logits = self.runner.prefill(ids[reused:])
        token = self._pick(logits, loop.allowed())
        self._sync()
        t_first = time.monotonic()
        state.record("prefill", t_prefill, t_first, float(len(ids) - reused))
        loop.t_last_s = t_first
        return token, t_prefill, t_first

    def _decode(
        self,
        token: int,
        loop: _DecodeLoop,
        state: GenerationState,
        cancel: CancelToken,
        on_token: OnToken | None,
    ) -> StopReason:
        """One model step per token until a stop, a budget or the cancel token ends generation: its reason."""
        while True:
            loop.gen.append(token)
            if loop.healer is not None and loop.heal_remaining:
                loop.heal_remaining = Healer.advance(loop.heal_remaining, self.tok.decode([token]))
            text = state.update(self.tok.decode(loop.gen), len(loop.gen))
            if on_token is not None:
                on_token(len(loop.gen), text)
            reason = self._stop_reason(token, loop, state, cancel)
            if reason is not None:
                return reason
            logits = self.runner.step(token)
            loop.cached_ids.append(token)
            token = self._pick(logits, loop.allowed())
            loop.t_last_s = time.monotonic()

    def _stop_reason(
        self, token: int, loop: _DecodeLoop, state: GenerationState, cancel: CancelToken
    ) -> StopReason | None:
        """Why generation ends after ``token``, checked in order: the end token, the stop rules (not while the
        heal text is being re-spelled), the budgets, cancellation; None: go on."""
        if token in self.stop_ids:
            return "eos"
        decision = state.stop_rule(healing=bool(loop.heal_remaining))
        if decision is not None:
            return decision.reason
        budget = state.budget_reason(time.monotonic())
        if budget is not None:
            return budget
        if cancel.cancelled:
            return "cancelled"
        return None

    def _finish_decode(
        self, gen: list[int], reason: StopReason, t_first: float, t_decode_end: float, state: GenerationState
    ) -> None:
        """The decode span (tokens after the first), and the text without the end token when it ended on one."""
        if len(gen) > 1:
            state.record("decode", t_first, t_decode_end, float(len(gen) - 1))
        if reason == "eos" and gen:
            state.update(self.tok.decode(gen[:-1]), len(gen))  # the end token is not part of the suggestion

    # ------------------------------------------------------------------------------------------ calibration

    def run_synthetic(self, prompt_tokens: int, new_tokens: int, request_id: str = "synthetic") -> list[PhaseSpan]:
        """Prefill exactly ``prompt_tokens`` tokens, then decode exactly ``new_tokens`` steps (no stops, no reuse)."""
        if prompt_tokens < 1 or new_tokens < 0:
            raise BadInput("run_synthetic needs prompt_tokens >= 1 and new_tokens >= 0")
        vocab = int(self.model.config.vocab_size)
        base = self.tok.encode("def compute(values):\n    total = 0\n    for v in values:\n        total += v\n")
        ids = [base[i % len(base)] % vocab for i in range(prompt_tokens)]
        with self._lock, torch.inference_mode():
            if isinstance(self.runner, StaticRunner):
                self.runner.ensure_capacity(prompt_tokens + new_tokens + 1)
            self.runner.begin(None, ids)
            self._sync()
            t0 = time.monotonic()
            token = int(torch.argmax(self.runner.prefill(ids)))
            self._sync()
            t1 = time.monotonic()
            for _ in range(new_tokens):
                token = int(torch.argmax(self.runner.step(token)))
            self._sync()
            t2 = time.monotonic()
            self.runner.end(None, [])
        spans = [PhaseSpan(request_id, "prefill", t0, t1, float(prompt_tokens))]
        if new_tokens:
            spans.append(PhaseSpan(request_id, "decode", t1, t2, float(new_tokens)))
        return spans

    def close(self) -> None:
        self.runner.forget()
