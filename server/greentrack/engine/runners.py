"""Forward-pass runners for the transformers backend: the KV cache, prompt-prefix reuse, and the decode step.

``TransformersBackend`` drives a greedy loop over a runner: ``begin`` picks how much of the prompt the cache
already holds, ``prefill`` computes the rest and returns the last position's logits, ``step`` feeds one token
and returns the next logits, ``end`` remembers what the cache holds for the next request.

- ``DynamicRunner`` (CPU default): one ``DynamicCache`` per document, a bounded LRU of documents; reuse is the
  longest common token prefix, cropped with ``DynamicCache.crop(-n)`` (transformers 5.x counts from the end).
- ``StaticRunner`` (CUDA default): one ``StaticCache`` of fixed size; reuse rewinds each layer's write position
  (``cumulative_length``), stale entries past it are masked by the causal mask and overwritten. Its decode
  step can be captured once in a CUDA graph and replayed (energy-facts.md: 26 ms → ~4 ms per token on an H100,
  the host-side launch loop being what bounds batch-1 decode).

At least one prompt token is always recomputed: the last position's logits are what the first generated token
comes from (a fully cached prompt would shift the output by one token).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

#: After KV reuse, a remainder of at most this many prompt tokens is fed through the captured decode step.
SMALL_PREFILL_TOKENS = 4


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable_tokens(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """Tokens of ``prompt`` whose KV can be kept: the common prefix, leaving at least one token to compute."""
    return max(0, min(common_prefix_len(cached, prompt), len(prompt) - 1))


@dataclass
class _DocState:
    ids: list[int]
    cache: Any  # transformers DynamicCache


class DynamicRunner:
    """A ``DynamicCache`` per document (LRU of ``max_documents``)."""

    kind = "dynamic"
    uses_graph = False

    def __init__(self, model: Any, device: torch.device, max_documents: int = 4) -> None:
        self.model = model
        self.device = device
        self.max_documents = max(1, max_documents)
        self._docs: OrderedDict[str, _DocState] = OrderedDict()
        self._cache: Any = None

    def begin(self, doc_key: str | None, ids: Sequence[int]) -> int:
        from transformers import DynamicCache

        state = self._docs.pop(doc_key, None) if doc_key is not None else None
        if state is None or state.cache is None:
            self._cache = DynamicCache(config=self.model.config)
            return 0
        keep = reusable_tokens(state.ids, ids)
        drop = len(state.ids) - keep
        if keep == 0:
            self._cache = DynamicCache(config=self.model.config)
            return 0
        if drop > 0:
            state.cache.crop(-drop)
        self._cache = state.cache
        return keep

    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = out.past_key_values
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        return self._forward(ids)

    def step(self, token: int) -> torch.Tensor:
        return self._forward((token,))

    def end(self, doc_key: str | None, cached_ids: list[int]) -> None:
        if doc_key is None or self._cache is None or int(self._cache.get_seq_length()) != len(cached_ids):
            self._cache = None  # nothing to keep (or a failed step left the cache out of step with the ids)
            return
        self._docs[doc_key] = _DocState(cached_ids, self._cache)
        self._docs.move_to_end(doc_key)
        while len(self._docs) > self.max_documents:
            self._docs.popitem(last=False)
        self._cache = None

    def forget(self) -> None:
        self._docs.clear()
        self._cache = None


class StaticRunner:
    """One ``StaticCache``; the decode step optionally captured in a CUDA graph (``use_graph``)."""

    kind = "static"

    def __init__(
        self, model: Any, device: torch.device, max_cache_len: int, use_graph: bool, compile_step: bool = False
    ) -> None:
        self.model = model
        self.device = device
        self.want_graph = use_graph and device.type == "cuda"
        self.compile_step = compile_step
        self._forward: Any = torch.compile(model.forward, dynamic=False) if compile_step else model.forward
        self.uses_graph = False
        self.graph_error = ""
        self._ids: list[int] = []  # what the cache holds, positions 0..len-1
        self._tok = torch.zeros((1, 1), dtype=torch.long, device=device)
        self._graph: Any = None
        self._graph_logits: torch.Tensor | None = None
        self._alloc(max_cache_len)

    def _alloc(self, max_cache_len: int) -> None:
        from transformers import StaticCache

        self.max_cache_len = int(max_cache_len)
        self.cache: Any = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
        self._ids = []
        self._graph = None
        self._graph_logits = None
        self.uses_graph = False

    def ensure_capacity(self, tokens: int) -> None:
        if tokens > self.max_cache_len:
            self._alloc(max(tokens, int(self.max_cache_len * 1.5)))

    def _set_length(self, n: int) -> None:
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False):
                layer.cumulative_length.fill_(n)

    def begin(self, doc_key: str | None, ids: Sequence[int]) -> int:
        keep = reusable_tokens(self._ids, ids) if doc_key is not None else 0
        self._set_length(keep)
        self._ids = list(ids[:keep])
        return keep

    def _initialized(self) -> bool:
        return bool(self.cache.layers) and bool(getattr(self.cache.layers[0], "is_initialized", False))

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        if self.want_graph and 1 <= len(ids) <= SMALL_PREFILL_TOKENS and self._initialized():
            # a few tokens left after KV reuse: graph steps (~5 ms each) beat one eager forward (~30 ms of launches)
            logits = self.step(ids[0])
            for token in ids[1:]:
                logits = self.step(token)
            return logits
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        logits_last: torch.Tensor = out.logits[0, -1]
        return logits_last

    def _eager_step(self) -> torch.Tensor:
        out = self._forward(input_ids=self._tok, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def _capture(self) -> None:
        """Capture one decode step (called after a prefill, so the cache tensors exist)."""
        saved = [int(layer.cumulative_length) for layer in self.cache.layers]
        try:
            stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self._eager_step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for layer, n in zip(self.cache.layers, saved, strict=True):
                layer.cumulative_length.fill_(n)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._eager_step()
            self._graph, self._graph_logits = graph, logits
            self.uses_graph = True
        except Exception as e:  # capture is an optimisation: fall back to eager decode, say why once
            self.want_graph = False
            self._forward = self.model.forward  # a failed torch.compile must not fail every later step
            self.graph_error = f"{type(e).__name__}: {e}"
            log.warning("CUDA graph capture failed, decoding eagerly: %s", self.graph_error)
        finally:
            for layer, n in zip(self.cache.layers, saved, strict=True):
                layer.cumulative_length.fill_(n)

    def step(self, token: int) -> torch.Tensor:
        self._tok.fill_(token)
        if self.want_graph and self._graph is None:
            self._capture()
        if self._graph is not None and self._graph_logits is not None:
            self._graph.replay()
            return self._graph_logits
        return self._eager_step()

    def end(self, doc_key: str | None, cached_ids: list[int]) -> None:
        in_step = self._initialized() and int(self.cache.layers[0].cumulative_length) == len(cached_ids)
        self._ids = cached_ids if doc_key is not None and in_step else []

    def forget(self) -> None:
        self._ids = []
