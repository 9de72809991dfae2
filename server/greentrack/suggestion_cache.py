"""The suggestion cache: what the user types into a suggestion still shown is served from it, with no model work.

Place in the flow: ``Pipeline.run`` asks ``lookup`` before the engine and ``remember``s every suggestion the engine
made; a hit becomes a completion of its own, logged with 0 J and outcome ``cached`` (``docs/interfaces.md``). The
``suggestion_cache`` setting (``greentrack.suggestionCache``, ``GREENTRACK_SUGGESTION_CACHE``, ``greentrack serve
--no-suggestion-cache``) switches it through ``Pipeline.use_suggestion_cache``.

A hit needs the same document (``document_key``), the same text before the place where the suggestion was shown,
the same text after the cursor, and what was typed since then being a prefix of the suggestion: the rest of the
suggestion is served. Entries are kept in least-recently-used order, at most ``capacity`` in all.

Size: 256 entries (peers: Tabby 100, llama.vscode 250, Continue 1000 in SQLite; Copilot a radix trie). A hit
needs the same place in the same document, so only the few most recent suggestions of the files being edited can
hit: 256 covers every keystroke of several minutes of typing across a handful of files, and keeps memory small
(an entry holds two 16-byte digests and a suggestion of at most ``max_tokens`` tokens: under 100 KB in all).
Pure: no clock, no files; thread-safe (``greentrack serve`` and vLLM's concurrent requests share one).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

#: Suggestions kept (least recently used dropped first); see the module doc for why this size.
DEFAULT_CAPACITY = 256


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True)
class CachedSuggestion:
    """A suggestion shown at ``offset`` of a document: digests of the text before and after the cursor."""

    completion_id: str
    document_key: str
    offset: int
    prefix_digest: bytes
    suffix_digest: bytes
    text: str


@dataclass(frozen=True)
class CacheHit:
    """What to show now: ``text``, the rest of the suggestion ``source_id`` after the ``typed`` characters."""

    source_id: str
    text: str
    typed: str


class SuggestionCache:
    """An LRU of shown suggestions, searched per document. ``capacity`` ≥ 1."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 (got {capacity})")
        self.capacity = capacity
        self._entries: OrderedDict[str, CachedSuggestion] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, completion_id: str, document_key: str, text: str, offset: int, suggestion: str) -> None:
        """Keep ``suggestion``, shown at ``offset`` of ``text`` (the whole document). Empty ones are not kept."""
        if not suggestion or not 0 <= offset <= len(text):
            return
        entry = CachedSuggestion(completion_id, document_key, offset, _digest(text[:offset]), _digest(text[offset:]),
                                 suggestion)
        with self._lock:
            self._entries[completion_id] = entry
            self._entries.move_to_end(completion_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def lookup(self, document_key: str, text: str, offset: int) -> CacheHit | None:
        """The rest of a suggestion this document showed, when the text typed since is a prefix of it; else None.

        The newest matching suggestion wins; a hit makes its entry the most recently used. The typed text may be
        empty (the same place asked again): then the whole suggestion is served.
        """
        if not 0 <= offset <= len(text):
            return None
        with self._lock:
            candidates = [e for e in reversed(self._entries.values())
                          if e.document_key == document_key and e.offset <= offset]
        suffix_digest = _digest(text[offset:]) if candidates else b""
        for entry in candidates:
            typed = text[entry.offset:offset]
            if entry.suffix_digest != suffix_digest or len(typed) >= len(entry.text):
                continue
            if not entry.text.startswith(typed) or _digest(text[:entry.offset]) != entry.prefix_digest:
                continue
            with self._lock:
                if entry.completion_id in self._entries:
                    self._entries.move_to_end(entry.completion_id)
                self.hits += 1
            return CacheHit(entry.completion_id, entry.text[len(typed):], typed)
        with self._lock:
            self.misses += 1
        return None

    def forget_document(self, document_key: str) -> None:
        """Drop every suggestion of one document (it was closed)."""
        with self._lock:
            for cid in [cid for cid, e in self._entries.items() if e.document_key == document_key]:
                del self._entries[cid]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
