"""Prompts: document text and cursor → the token ids a backend prefills, plus token-healing instructions.

Backend-independent (the transformers and vLLM backends both use it): everything here is a pure function of
strings and token ids, given a ``TokenizerLike``. Steps: validate the document and cursor (``BadInput``), cut a
window around the cursor at line boundaries within a token budget (only the window is ever tokenized, so a
5 MB file costs what a small one does), assemble fill-in-the-middle (FIM) prompts for models that have FIM
tokens (detected from the vocabulary) or prefix-only prompts otherwise, and *heal* the end of the prefix: a
cursor after spaces or inside a word backs off the trailing partial tokens and constrains the first generated
tokens to re-spell exactly the removed text (``Healer``), so the model neither doubles indentation nor splits
a word.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from greentrack.errors import BadInput

#: Upper bound of characters per token when cutting a character window before tokenizing (generous: runs of
#: spaces tokenize into long tokens). The window is then trimmed by real token counts.
MAX_CHARS_PER_TOKEN = 12
DEFAULT_CONTEXT_TOKENS = 1024
#: Share of the token budget given to the text after the cursor when the model has FIM tokens.
DEFAULT_SUFFIX_SHARE = 0.25
#: Share of the prefix budget left free after a re-cut, so the next keystrokes keep the same window start.
REUSE_HEADROOM = 0.2
#: Tokens backed off at most by token healing.
MAX_HEAL_TOKENS = 3

_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_RUN = re.compile(r"(\w+|[ \t]+|[^\w\s]+)$")


class TokenizerLike(Protocol):
    """What prompt building needs from a tokenizer: plain text ↔ ids, no special tokens added."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# ---------------------------------------------------------------------------------------------- FIM formats


@dataclass(frozen=True)
class FimFormat:
    """A family's fill-in-the-middle tokens, as they appear in its vocabulary (PSM order: prefix, suffix, middle)."""

    family: str
    prefix: str
    suffix: str
    middle: str
    extra_stops: tuple[str, ...] = ()


FIM_FORMATS: tuple[FimFormat, ...] = (
    FimFormat("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
              ("<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|endoftext|>", "<|im_end|>")),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
              ("<fim_pad>", "<file_sep>", "<|endoftext|>")),
    FimFormat("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
              ("<|EOT|>", "<｜end▁of▁sentence｜>")),
    FimFormat("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>", "</s>")),
)


def detect_fim(vocabulary: Iterable[str]) -> FimFormat | None:
    """The FIM format whose three tokens are all in ``vocabulary`` (token strings, special tokens included)."""
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset, Mapping)) else set(vocabulary)
    for fmt in FIM_FORMATS:
        if fmt.prefix in vocab and fmt.suffix in vocab and fmt.middle in vocab:
            return fmt
    return None


def assemble_fim_text(fmt: FimFormat, prefix: str, suffix: str) -> str:
    """The prompt as a string, in the family's documented PSM layout (CodeLlama: ``<PRE> p <SUF>s <MID>``)."""
    if fmt.family == "codellama":
        return f"<PRE> {prefix} <SUF>{suffix} <MID>"
    return f"{fmt.prefix}{prefix}{fmt.suffix}{suffix}{fmt.middle}"


# ---------------------------------------------------------------------------------------------- the window


def validate(text: str, offset: int) -> None:
    """``BadInput`` for a cursor outside the document or binary content (NUL bytes)."""
    if not isinstance(text, str):
        raise BadInput("the document is not text")
    if offset < 0 or offset > len(text):
        raise BadInput(f"cursor offset {offset} is outside the document (0..{len(text)})")
    if "\x00" in text:
        raise BadInput("the document looks binary (it contains NUL bytes); nothing to complete")
    if _SURROGATE.search(text):
        raise BadInput("the document contains undecodable bytes (not valid UTF-8 text); nothing to complete")


@dataclass(frozen=True)
class Window:
    """The part of the document the prompt sees. Offsets are ``str`` indices into the document."""

    prefix: str
    suffix: str
    prefix_start: int
    suffix_end: int
    prefix_tokens: int
    suffix_tokens: int


def _cut_prefix(text: str, offset: int, max_chars: int) -> tuple[int, str]:
    start = max(0, offset - max_chars)
    if start > 0:
        nl = text.find("\n", start, offset)
        if nl != -1:
            start = nl + 1
    return start, text[start:offset]


def _cut_suffix(text: str, offset: int, max_chars: int) -> tuple[int, str]:
    end = min(len(text), offset + max_chars)
    if end < len(text):
        nl = text.rfind("\n", offset, end)
        if nl != -1:
            end = nl + 1
    return end, text[offset:end]


def prefix_start_cut(prefix: str) -> bool:
    """True when the prefix has a line boundary to cut at (a single huge line is kept as cut by characters)."""
    return "\n" in prefix[:-1]


def _trim_to_budget(piece: str, budget: int, count: Callable[[str], int], from_start: bool) -> tuple[str, int]:
    """Drop whole lines from the far end of ``piece`` (its start for a prefix) until it fits ``budget`` tokens."""
    if budget <= 0 or not piece:
        return "", 0
    n = count(piece)
    for _ in range(64):
        if n <= budget:
            return piece, n
        keep_chars = max(1, int(len(piece) * budget / n * 0.95))
        if from_start:
            cut = len(piece) - keep_chars
            nl = piece.find("\n", cut)
            piece = piece[nl + 1 :] if 0 <= nl < len(piece) - 1 else piece[cut:]
        else:
            nl = piece.rfind("\n", 0, keep_chars)
            piece = piece[: nl + 1] if nl > 0 else piece[:keep_chars]
        n = count(piece)
    return piece, n  # pragma: no cover - 64 rounds always converge


def fit_window(
    text: str,
    offset: int,
    count_tokens: Callable[[str], int],
    budget_tokens: int,
    suffix_share: float,
    prefer_start: int | None = None,
    headroom: float = 0.0,
) -> Window:
    """Cut the window: the suffix takes up to ``suffix_share`` of the budget, the prefix the rest (lines kept whole).

    ``prefer_start`` (the previous request's ``prefix_start`` in this document) keeps the window's start where it
    was while the prefix still fits, so successive keystrokes share their prompt's first tokens (KV reuse); when
    it no longer fits, a new cut leaves ``headroom`` (a share) of the prefix budget free for the next keystrokes.
    """
    budget_tokens = max(8, int(budget_tokens))
    suffix_budget = int(budget_tokens * max(0.0, min(0.9, suffix_share)))
    _end, suffix = _cut_suffix(text, offset, suffix_budget * MAX_CHARS_PER_TOKEN)
    suffix, suffix_tokens = _trim_to_budget(suffix, suffix_budget, count_tokens, from_start=False)
    prefix_budget = budget_tokens - suffix_tokens
    at_line_start = prefer_start is not None and (prefer_start == 0 or text[prefer_start - 1 : prefer_start] == "\n")
    if prefer_start is not None and 0 <= prefer_start <= offset and at_line_start:
        candidate = text[prefer_start:offset]
        if len(candidate) <= prefix_budget * MAX_CHARS_PER_TOKEN:
            n = count_tokens(candidate) if candidate else 0
            if n <= prefix_budget:
                return Window(candidate, suffix, prefer_start, offset + len(suffix), n, suffix_tokens)
    _start, prefix = _cut_prefix(text, offset, prefix_budget * MAX_CHARS_PER_TOKEN)
    prefix, prefix_tokens = _trim_to_budget(prefix, prefix_budget, count_tokens, from_start=True)
    if headroom > 0 and prefix_tokens > prefix_budget * (1 - headroom) and prefix_start_cut(prefix):
        prefix, prefix_tokens = _trim_to_budget(prefix, int(prefix_budget * (1 - headroom)), count_tokens, True)
    return Window(prefix, suffix, offset - len(prefix), offset + len(suffix), prefix_tokens, suffix_tokens)


# ---------------------------------------------------------------------------------------------- token healing


class Healer:
    """Constrains the first generated tokens to re-spell the text backed off the prompt.

    Built once per tokenizer from each token's decoded text (``pieces[i]``); ``allowed(remaining)`` lists the
    token ids whose text starts with ``remaining`` or is a non-empty proper prefix of it.
    """

    def __init__(self, pieces: Sequence[str], excluded: Iterable[int] = ()) -> None:
        skip = set(excluded)
        entries = sorted((p, i) for i, p in enumerate(pieces) if p and i not in skip and "\ufffd" not in p)
        self._sorted = [p for p, _ in entries]
        self._ids = [i for _, i in entries]
        self._by_piece: dict[str, list[int]] = {}
        for p, i in entries:
            self._by_piece.setdefault(p, []).append(i)

    def allowed(self, remaining: str) -> list[int]:
        lo = bisect.bisect_left(self._sorted, remaining)
        hi = bisect.bisect_left(self._sorted, remaining + "\U0010ffff")
        ids = list(self._ids[lo:hi])
        for k in range(1, len(remaining)):
            ids.extend(self._by_piece.get(remaining[:k], ()))
        return ids

    @staticmethod
    def advance(remaining: str, piece: str) -> str:
        """What is still to re-spell after generating ``piece``."""
        return "" if piece.startswith(remaining) else remaining[len(piece) :]


def heal_split(prefix_ids: Sequence[int], decode: Callable[[Sequence[int]], str], prefix: str) -> int:
    """How many trailing tokens of ``prefix_ids`` to back off (0 when the prefix ends a line or is empty).

    Backs off the last token, then earlier ones while the removed text does not yet cover the trailing run of
    word characters, spaces/tabs or punctuation, at most ``MAX_HEAL_TOKENS``; always leaves one token.
    """
    if not prefix or prefix.endswith("\n") or len(prefix_ids) < 2:
        return 0
    run = _TRAILING_RUN.search(prefix)
    run_len = len(run.group(0)) if run else 0
    k = 1
    while k < MAX_HEAL_TOKENS and k < len(prefix_ids) - 1:
        removed = decode(prefix_ids[-k:])
        if len(removed) >= run_len or "\n" in removed:
            break
        k += 1
    return k


# ---------------------------------------------------------------------------------------------- the prompt


@dataclass(frozen=True)
class Prompt:
    """What a backend prefills. ``heal_text``: the first generated tokens must re-spell it (then it is dropped)."""

    ids: list[int]
    window: Window
    fim: FimFormat | None
    heal_text: str = ""
    healed_tokens: int = 0
    extras: dict[str, object] = field(default_factory=dict)


class PromptBuilder:
    """Builds prompts for one tokenizer. ``vocab`` maps token strings to ids (special tokens included)."""

    def __init__(
        self,
        tokenizer: TokenizerLike,
        vocab: Mapping[str, int],
        *,
        bos_ids: Sequence[int] = (),
        fim: FimFormat | bool | None = True,
        suffix_share: float | None = None,
        healing: bool = True,
        headroom: float = REUSE_HEADROOM,
    ) -> None:
        self.tokenizer = tokenizer
        self.headroom = headroom
        self.vocab = vocab
        self.bos_ids = list(bos_ids)
        if fim is True:
            self.fim: FimFormat | None = detect_fim(vocab)
        elif fim is False:
            self.fim = None
        else:
            self.fim = fim
        self.suffix_share = (DEFAULT_SUFFIX_SHARE if self.fim else 0.0) if suffix_share is None else suffix_share
        self.healing = healing

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text)) if text else 0

    def build(
        self, text: str, offset: int, context_tokens: int = DEFAULT_CONTEXT_TOKENS, prefer_start: int | None = None
    ) -> Prompt:
        """The prompt for a cursor at ``offset``; ``prefer_start``: see ``fit_window`` (pass the last
        ``prompt.window.prefix_start`` of the same document to keep KV reuse working while typing)."""
        validate(text, offset)
        share = self.suffix_share if self.fim else 0.0
        window = fit_window(text, offset, self.count_tokens, context_tokens, share, prefer_start, self.headroom)
        if not window.prefix.strip() and not (self.fim and window.suffix.strip()):
            raise BadInput("nothing to complete from: the text before the cursor is empty")
        prefix_ids = self.tokenizer.encode(window.prefix) if window.prefix else []
        k = heal_split(prefix_ids, self.tokenizer.decode, window.prefix) if self.healing else 0
        heal_text = self.tokenizer.decode(prefix_ids[-k:]) if k else ""
        if k and not window.prefix.endswith(heal_text):  # decode did not round-trip: do not heal
            k, heal_text = 0, ""
        kept = prefix_ids[: len(prefix_ids) - k]
        if self.fim is not None:
            fmt = self.fim
            suffix_ids = self.tokenizer.encode(window.suffix) if window.suffix else []
            ids = [*self.bos_ids, self.vocab[fmt.prefix], *kept, self.vocab[fmt.suffix], *suffix_ids,
                   self.vocab[fmt.middle]]
        else:
            ids = [*self.bos_ids, *kept]
        return Prompt(ids, window, self.fim, heal_text, k)


class WindowStarts:
    """Where each document's last prompt window started (``Prompt.window.prefix_start``), for the next request's
    ``prefer_start``: while the prefix still fits, successive keystrokes keep the same first tokens, so the engine's
    KV cache (greentrack's own, or vLLM's prefix cache, which matches from the prompt's start) is reused instead of
    recomputing a window that slid by a line. Bounded (least recently used documents forgotten); thread-safe."""

    def __init__(self, max_documents: int = 64) -> None:
        self._starts: OrderedDict[str, int] = OrderedDict()
        self._max = max_documents
        self._lock = threading.Lock()

    def get(self, document_key: str) -> int | None:
        with self._lock:
            return self._starts.get(document_key)

    def remember(self, document_key: str, prefix_start: int) -> None:
        with self._lock:
            self._starts[document_key] = prefix_start
            self._starts.move_to_end(document_key)
            while len(self._starts) > self._max:
                self._starts.popitem(last=False)


def build_healer(tokenizer: Any, stop_ids: Iterable[int]) -> tuple[Healer, list[str]]:
    """The healer for a Hugging Face tokenizer, and every token's text: special and stop tokens excluded.

    Both backends build theirs here (the vLLM backend needs no transformers model for it).
    """
    n = len(tokenizer)
    pieces: list[str] = list(tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False))
    excluded = set(getattr(tokenizer, "all_special_ids", [])) | set(stop_ids)
    excluded |= set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    return Healer(pieces, excluded), pieces
