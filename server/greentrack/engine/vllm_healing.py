"""Token healing inside vLLM: a logits processor that makes the first tokens re-spell the backed-off text.

Flow: ``prompt.PromptBuilder`` backs the trailing partial tokens off the prompt (``Prompt.heal_text``); the
transformers backend then restricts its own argmax to ``Healer.allowed(remaining)`` until the text is
re-spelled. vLLM samples inside its engine, so the same restriction is a vLLM v1 ``LogitsProcessor``: the
backend puts the heal text itself in ``SamplingParams.extra_args["greentrack_heal"]`` (a str: it crosses to
vLLM's engine-core and worker processes with the request), and the processor masks every logit outside the
allowed set for that request's rows until its generated tokens cover the heal text. The processor lives
wherever vLLM runs it (this process with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, else vLLM's engine core or
its workers), so it builds the model's ``Healer`` there, from the engine's own tokenizer, on the first healed
request; if that fails it logs one warning and leaves every request unhealed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greentrack.engine.prompt import Healer, build_healer
from greentrack.engine.stops import stop_token_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXTRA_ARG = "greentrack_heal"
#: The processor's name in this module (``processor_class`` creates it; ``__getattr__`` resolves it, so pickle
#: and vLLM's ``module:Class`` names find it in a spawned process).
PROCESSOR_NAME = "HealingLogitsProcessor"


@dataclass(frozen=True)
class HealEntry:
    """What a healed request must re-spell, and the healer (token texts) of its model."""

    heal_text: str
    healer: Healer
    pieces: list[str]

    def remaining(self, output_ids: list[int]) -> str:
        """What is still to re-spell after ``output_ids``."""
        rest = self.heal_text
        for tok in output_ids:
            if not rest:
                break
            piece = self.pieces[tok] if 0 <= tok < len(self.pieces) else ""
            rest = Healer.advance(rest, piece)
        return rest


def model_stop_ids(tokenizer: Any) -> set[int]:
    """The token ids that end a vLLM generation for this tokenizer's model: its EOS and ``stops.stop_token_ids``
    (the backend's ``SamplingParams.stop_token_ids``; never allowed while healing)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return stop_token_ids(dict(tokenizer.get_vocab()), [] if eos is None else [int(eos)])


def model_healer(tokenizer: Any) -> tuple[Healer, list[str]]:
    """The healer of a model and its token texts, as the backend's prompt side sees them: its stop tokens
    (``model_stop_ids``) are never allowed while healing."""
    return build_healer(tokenizer, model_stop_ids(tokenizer))


def engine_tokenizer(vllm_config: Any) -> Any:
    """The tokenizer vLLM loads for the engine's model: ``cached_tokenizer_from_config(model_config)`` from
    ``vllm.tokenizers`` (vLLM 0.26 and 0.32) or ``vllm.transformers_utils.tokenizer`` (older vLLM), else
    transformers' ``AutoTokenizer`` for the config's tokenizer folder."""
    model_config = vllm_config.model_config
    for module in ("vllm.tokenizers", "vllm.transformers_utils.tokenizer"):
        try:
            from_config = importlib.import_module(module).cached_tokenizer_from_config
        except (ImportError, AttributeError):
            continue
        tokenizer = from_config(model_config)
        if tokenizer is not None:  # None: the engine skips tokenizer init
            return tokenizer
        break
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_config.tokenizer, revision=model_config.tokenizer_revision,
                                         trust_remote_code=model_config.trust_remote_code)


class LazyHealer:
    """The model's healer, built on first use by ``build`` (None, after one warning, if that fails)."""

    def __init__(self, build: Callable[[], tuple[Healer, list[str]]]) -> None:
        self._build: Callable[[], tuple[Healer, list[str]]] | None = build
        self._healer: tuple[Healer, list[str]] | None = None

    def get(self) -> tuple[Healer, list[str]] | None:
        if self._build is not None:
            build, self._build = self._build, None
            try:
                self._healer = build()
            except Exception as e:  # a healer we cannot build turns healing off, never the engine
                log.warning("token healing is off in this vLLM process: the model's healer could not be built "
                            "(%s: %s)", type(e).__name__, e)
        return self._healer


class _HealRows:
    """The batch rows of healed requests (row index → entry, the request's output ids), kept in step with vLLM's
    batch updates, and the masking of their logits. Plain Python, so the vLLM subclass only forwards to it."""

    def __init__(self, healer: LazyHealer) -> None:
        self.healer = healer
        self.rows: dict[int, tuple[HealEntry, list[int]]] = {}

    def remove(self, removed: Iterable[int]) -> None:
        """Forget the rows of requests that left the batch."""
        for index in removed:
            self.rows.pop(index, None)

    def add(self, added: Iterable[tuple[int, Any, Any, list[int]]]) -> None:
        """Track the new requests that carry a heal text; a row reused by any other request is freed."""
        for index, params, _prompt_ids, output_ids in added:
            extra = getattr(params, "extra_args", None) or {}
            heal_text = extra.get(EXTRA_ARG)
            healer = self.healer.get() if isinstance(heal_text, str) and heal_text else None
            if healer is not None:
                self.rows[index] = (HealEntry(str(heal_text), *healer), output_ids)
            else:
                self.rows.pop(index, None)

    def move(self, moved: Iterable[tuple[int, int, Any]], swap: Any) -> None:
        """Follow rows that vLLM moved (``a`` → ``b``) or swapped (direction ``swap``) within the batch."""
        for a, b, direction in moved:
            row_a = self.rows.pop(a, None)
            row_b = self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == swap and row_b is not None:
                self.rows[a] = row_b

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Restrict each healed row to its allowed tokens; drop the rows whose heal text is re-spelled."""
        done = []
        for index, (entry, output_ids) in self.rows.items():
            rest = entry.remaining(output_ids)
            if not rest:
                done.append(index)
                continue
            _keep_only(logits, index, entry.healer.allowed(rest))
        for index in done:
            del self.rows[index]
        return logits


def _keep_only(logits: torch.Tensor, index: int, allowed: list[int]) -> None:
    """Set every logit of row ``index`` outside ``allowed`` to -inf (nothing when ``allowed`` is empty)."""
    if not allowed or index >= logits.shape[0]:
        return
    import torch

    idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
    keep = logits[index].index_select(0, idx)
    logits[index].fill_(float("-inf"))
    logits[index].index_copy_(0, idx, keep)


_processor_class: type | None = None


def processor_class() -> type:
    """The ``LogitsProcessor`` subclass (created on first use: vllm is an optional import). It pickles by
    reference as this module's ``HealingLogitsProcessor``: vLLM sends it to a spawned engine core or worker
    inside its config, and the process there resolves the name through ``__getattr__``."""
    global _processor_class
    if _processor_class is not None:
        return _processor_class
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class HealingLogitsProcessor(LogitsProcessor):  # type: ignore[misc, unused-ignore]
        """Restricts healed requests' rows to the tokens that continue their heal text."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.heal_rows = _HealRows(LazyHealer(lambda: model_healer(engine_tokenizer(vllm_config))))

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            self.heal_rows.remove(batch_update.removed)
            self.heal_rows.add(batch_update.added)
            self.heal_rows.move(batch_update.moved, MoveDirectionality.SWAP)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return self.heal_rows.mask(logits)

    HealingLogitsProcessor.__qualname__ = PROCESSOR_NAME
    HealingLogitsProcessor.__module__ = __name__
    _processor_class = HealingLogitsProcessor
    return HealingLogitsProcessor


def __getattr__(name: str) -> Any:
    """``HealingLogitsProcessor``: the processor class, created on first access (PEP 562)."""
    if name == PROCESSOR_NAME:
        return processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
