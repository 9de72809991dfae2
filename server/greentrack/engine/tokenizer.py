"""The tokenizer both backends build prompts with: a transformers tokenizer behind ``prompt.TokenizerLike``.

Flow: a backend loads its tokenizer (transformers' ``AutoTokenizer`` or the one vLLM's engine holds) and wraps
it in ``HFTokenizer`` (the transformers backend) or ``LockedTokenizer`` (the vLLM backend, whose prompts are
built in the callers' threads while its engine thread detokenizes); ``prompt.PromptBuilder`` then encodes and
decodes through it. No torch here: the vLLM backend imports this module too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


class HFTokenizer:
    """``prompt.TokenizerLike`` over a transformers tokenizer (no special tokens added, none skipped)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text

    def bos_ids(self) -> list[int]:
        """What the tokenizer puts before a text by default (often nothing for code models' byte-level BPE)."""
        with_special = list(self.tokenizer.encode("x", add_special_tokens=True))
        without = self.encode("x")
        if len(with_special) > len(without) and with_special[len(with_special) - len(without) :] == without:
            return with_special[: len(with_special) - len(without)]
        return []


class LockedTokenizer:
    """``HFTokenizer`` (same encode/decode rules), serialized: one tokenizer used from several threads."""

    def __init__(self, tokenizer: Any) -> None:
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
