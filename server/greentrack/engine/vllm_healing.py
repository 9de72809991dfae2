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
from dataclasses import dataclass
from typing import Any

from greentrack.engine.prompt import Healer

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


_processor_class: type | None = None


def processor_class() -> type:
    """The ``LogitsProcessor`` subclass (created on first use: vllm is an optional import)."""
    global _processor_class
    if _processor_class is not None:
        return _processor_class
    import torch
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class HealingLogitsProcessor(LogitsProcessor):  # type: ignore[misc, unused-ignore]
        """Restricts healed requests' rows to the tokens that continue their heal text."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            self.rows: dict[int, tuple[HealEntry, list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt_ids, output_ids in batch_update.added:
                extra = getattr(params, "extra_args", None) or {}
                entry = lookup(str(extra[EXTRA_ARG])) if EXTRA_ARG in extra else None
                if entry is not None:
                    self.rows[index] = (entry, output_ids)
                else:
                    self.rows.pop(index, None)
            for a, b, direction in batch_update.moved:
                row_a = self.rows.pop(a, None)
                row_b = self.rows.pop(b, None)
                if row_a is not None:
                    self.rows[b] = row_a
                if direction == MoveDirectionality.SWAP and row_b is not None:
                    self.rows[a] = row_b

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            done = []
            for index, (entry, output_ids) in self.rows.items():
                rest = entry.remaining(output_ids)
                if not rest:
                    done.append(index)
                    continue
                allowed = entry.healer.allowed(rest)
                if not allowed or index >= logits.shape[0]:
                    continue
                idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
                keep = logits[index].index_select(0, idx)
                logits[index].fill_(float("-inf"))
                logits[index].index_copy_(0, idx, keep)
            for index in done:
                del self.rows[index]
            return logits

    _processor_class = HealingLogitsProcessor
    return HealingLogitsProcessor
