"""The tokenizer both backends build prompts with: a transformers tokenizer behind ``prompt.TokenizerLike``.

Flow: a backend loads its tokenizer (transformers' ``AutoTokenizer``, the one vLLM's engine holds, or, for the
int4 CPU engine, ``FastTokenizer`` over the ``tokenizers`` library) and wraps it in ``HFTokenizer`` (the
transformers backend) or ``LockedTokenizer`` (the vLLM backend, whose prompts are built in the callers' threads
while its engine thread detokenizes); ``prompt.PromptBuilder`` then encodes and decodes through it. No torch
here: the vLLM backend imports this module too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: ``tokenizer_config.json`` keys naming one special token each (transformers' ``all_special_ids`` order).
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
#: ``tokenizer_config.json`` keys listing further special tokens.
_LISTED_SPECIAL = ("additional_special_tokens", "extra_special_tokens")


class FastTokenizer:
    """What greentrack calls of a transformers fast tokenizer, over the ``tokenizers`` library alone.

    Same ids and texts as ``transformers.PreTrainedTokenizerFast`` on the same ``tokenizer.json`` (its
    ``encode``/``decode`` are these calls of the same Rust tokenizer), without importing transformers: in the
    language server's process that import costs ~20 MiB, its tokenizer classes ~50 MiB more at load
    (docs/benchmarks.md, issue 15). Special tokens: the ones ``tokenizer_config.json`` names (``all_special_ids``)
    and the file's added tokens (``added_tokens_decoder``). No tokenization-space clean-up: greentrack never asks
    for it (and transformers skips it for BPE tokenizers).
    """

    def __init__(self, tokenizer: Any, special_tokens: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        ids = [tokenizer.token_to_id(token) for token in special_tokens]
        self.all_special_ids: list[int] = list(dict.fromkeys(i for i in ids if i is not None))
        self.added_tokens_decoder: dict[int, str] = {
            int(i): str(token.content) for i, token in tokenizer.get_added_tokens_decoder().items()
        }

    @classmethod
    def from_folder(cls, folder: Path) -> FastTokenizer:
        """``folder/tokenizer.json`` (required) and ``folder/tokenizer_config.json`` (special tokens, optional)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        return cls(tokenizer, special_token_names(config))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def __call__(self, text: str) -> dict[str, list[int]]:
        """``{"input_ids": ...}`` with special tokens added, as a transformers tokenizer's call."""
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        if clean_up_tokenization_spaces:
            raise ValueError("FastTokenizer does not clean up tokenization spaces")
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool = False) -> list[str]:
        if clean_up_tokenization_spaces:
            raise ValueError("FastTokenizer does not clean up tokenization spaces")
        texts: list[str] = self._tokenizer.decode_batch([list(ids) for ids in batch],
                                                        skip_special_tokens=skip_special_tokens)
        return texts

    def get_vocab(self) -> dict[str, int]:
        vocab: dict[str, int] = self._tokenizer.get_vocab(with_added_tokens=True)
        return vocab

    def __len__(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))


def special_token_names(config: dict[str, Any]) -> list[str]:
    """The special tokens a ``tokenizer_config.json`` names (a token is a string or ``{"content": ...}``)."""
    def content(token: Any) -> str | None:
        if isinstance(token, dict):
            token = token.get("content")
        return token if isinstance(token, str) else None

    names = [content(config.get(key)) for key in _NAMED_SPECIAL]
    for key in _LISTED_SPECIAL:
        listed = config.get(key)
        if isinstance(listed, dict):  # extra_special_tokens may map names to tokens
            listed = list(listed.values())
        if isinstance(listed, list):
            names += [content(token) for token in listed]
    return [name for name in names if name]


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
