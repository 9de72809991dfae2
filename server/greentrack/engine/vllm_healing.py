"""Token healing inside vLLM: a logits processor that makes the first tokens re-spell the backed-off text.

Flow: ``prompt.PromptBuilder`` backs the trailing partial tokens off the prompt (``Prompt.heal_text``); the
transformers backend then restricts its own argmax to ``Healer.allowed(remaining)`` until the text is
re-spelled. vLLM samples inside its engine, so the same restriction is a vLLM v1 ``LogitsProcessor``: the
backend registers each healed request under a key (``register``), passes the key in
``SamplingParams.extra_args["greentrack_heal"]``, and the processor masks every logit outside the allowed
set for that request's rows until its generated tokens cover the heal text. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the processor reads the registry directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greentrack.engine.prompt import Healer

if TYPE_CHECKING:
    import torch

EXTRA_ARG = "greentrack_heal"


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


_registry: dict[str, HealEntry] = {}
_lock = threading.Lock()


def register(key: str, entry: HealEntry) -> None:
    with _lock:
        _registry[key] = entry


def unregister(key: str) -> None:
    with _lock:
        _registry.pop(key, None)


def lookup(key: str) -> HealEntry | None:
    with _lock:
        return _registry.get(key)


class _HealRows:
    """The batch rows of healed requests (row index → entry, the request's output ids), kept in step with vLLM's
    batch updates, and the masking of their logits. Plain Python, so the vLLM subclass only forwards to it."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[HealEntry, list[int]]] = {}

    def remove(self, removed: Iterable[int]) -> None:
        """Forget the rows of requests that left the batch."""
        for index in removed:
            self.rows.pop(index, None)

    def add(self, added: Iterable[tuple[int, Any, Any, list[int]]]) -> None:
        """Track the new requests that carry a registered heal key; a row reused by any other request is freed."""
        for index, params, _prompt_ids, output_ids in added:
            extra = getattr(params, "extra_args", None) or {}
            entry = lookup(str(extra[EXTRA_ARG])) if EXTRA_ARG in extra else None
            if entry is not None:
                self.rows[index] = (entry, output_ids)
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
    """The ``LogitsProcessor`` subclass (created on first use: vllm is an optional import)."""
    global _processor_class
    if _processor_class is not None:
        return _processor_class
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class HealingLogitsProcessor(LogitsProcessor):  # type: ignore[misc, unused-ignore]
        """Restricts healed requests' rows to the tokens that continue their heal text."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.heal_rows = _HealRows()

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

    _processor_class = HealingLogitsProcessor
    return HealingLogitsProcessor
