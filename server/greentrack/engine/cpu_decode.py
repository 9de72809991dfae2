"""The CPU engine: a llama forward pass of its own over int4 weights, with a preallocated KV cache per document.

Place in the flow: ``TransformersBackend`` (CPU, a llama GGUF such as the embedded model) drives ``CpuRunner``
exactly like the other runners of ``runners``: ``begin`` (KV reuse: the longest common token prefix), ``prefill``,
``step`` (one token), ``end``. ``CpuLlama`` holds ``quantize.LlamaWeights`` and computes logits.

What makes a decode step cheap (issue 15; figures in docs/benchmarks.md, "CPU engine"):
- the weights are read 4-bit (``quantize.Int4Linear``): a quarter of bf16's memory traffic for the matrices;
  the output head too, its ``RESCORE`` best candidates then recomputed from the exact embedding rows;
- the KV cache is one preallocated float32 tensor per document, written in place (``KvCache``): nothing is
  copied per step (transformers' ``DynamicCache`` concatenates, i.e. copies the whole cache, at every step);
  it grows by doubling when a prompt outgrows it;
- attention for one query token is three float32 operations over the cache (``bmm``, ``softmax``, ``bmm``):
  PyTorch's bf16 flash-attention kernel costs ~6x more for a single query on this CPU;
- q, k, v and gate, up are one matrix each (fewer kernel calls per layer).
A prefill of more than ``quantize.DENSE_ROWS`` tokens uses the dense bf16 weights (mapped from a file, one
layer resident at a time: ``quantize.DenseFile``) and PyTorch's bf16 ``scaled_dot_product_attention``, as the
transformers model does, so prefill stays as fast as before.

The q/k rows keep the GGUF's interleaved rotary layout, so rotary embedding is a complex multiply; q·k is the
same as with transformers' half-split layout (both are the same rotation of the same pairs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from greentrack.engine.quantize import DENSE_ROWS, Int4Linear, LlamaWeights
from greentrack.engine.runners import reusable_tokens

_CACHE_ROUND = 256  # KV capacity grows in multiples of this many tokens
#: Candidates of the int4 output head whose logits are recomputed exactly (``CpuLlama.forward``).
RESCORE = 16


class KvCache:
    """Keys and values of every layer: float32 ``[layers, kv_heads, capacity, head_dim]``; ``length`` filled."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int = _CACHE_ROUND) -> None:
        self.shape = (layers, kv_heads, head_dim)
        self.length = 0
        self.k, self.v = self._empty(capacity), self._empty(capacity)

    def _empty(self, capacity: int) -> torch.Tensor:
        layers, kv_heads, head_dim = self.shape
        return torch.empty((layers, kv_heads, capacity, head_dim), dtype=torch.float32)

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])

    def reserve(self, tokens: int) -> None:
        """Room for ``tokens`` positions; growing copies the filled part once (doubling: amortized O(1))."""
        if tokens <= self.capacity:
            return
        size = max(tokens, 2 * self.capacity)
        size = -(-size // _CACHE_ROUND) * _CACHE_ROUND
        k, v = self._empty(size), self._empty(size)
        k[:, :, : self.length] = self.k[:, :, : self.length]
        v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v


class CpuLlama:
    """A llama-family causal LM over ``LlamaWeights``. ``config``/``generation_config``: ``config.json`` and
    ``generation_config.json`` as attribute objects for the backend (vocabulary size, end tokens), unused here."""

    def __init__(self, weights: LlamaWeights, config: Any = None, generation_config: Any = None) -> None:
        self.weights = weights
        self.config = config
        self.generation_config = generation_config
        s = weights.shape
        self.shape = s
        self.q_dim = s.heads * s.head_dim
        self.kv_dim = s.kv_heads * s.head_dim
        self.group = s.heads // s.kv_heads
        self.scale = s.head_dim**-0.5
        self.inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float32) / s.head_dim))
        self._rope = torch.empty((0, s.head_dim // 2), dtype=torch.complex64)
        self.rescore = isinstance(weights.head, Int4Linear) and weights.head_is_embed

    def new_cache(self, capacity: int = _CACHE_ROUND) -> KvCache:
        return KvCache(self.shape.layers, self.shape.kv_heads, self.shape.head_dim, capacity)

    def _rotation(self, start: int, count: int) -> torch.Tensor:
        """``e^(i·pos·freq)`` for positions ``start .. start+count-1``: complex64 [count, 1, head_dim/2]."""
        end = start + count
        if end > self._rope.shape[0]:
            size = -(-max(end, 2 * self._rope.shape[0]) // _CACHE_ROUND) * _CACHE_ROUND
            angles = torch.outer(torch.arange(size, dtype=torch.float32), self.inv_freq)
            self._rope = torch.polar(torch.ones_like(angles), angles)
        return self._rope[start:end, None, :]

    def forward(self, ids: Sequence[int], cache: KvCache) -> torch.Tensor:
        """Feed ``ids`` at positions ``cache.length ...``; returns the last position's logits (bf16 [vocab])."""
        s = self.shape
        count = len(ids)
        start = cache.length
        cache.reserve(start + count)
        end = start + count
        rot = self._rotation(start, count)
        qk_heads = s.heads + s.kv_heads
        qk_dim = self.q_dim + self.kv_dim
        h = self.weights.embed[torch.tensor(list(ids), dtype=torch.long)]
        for i, layer in enumerate(self.weights.layers):
            x = F.rms_norm(h, (s.hidden,), layer.attn_norm, s.rms_eps)
            qkv = layer.qkv(x)
            qk = torch.view_as_complex(qkv[:, :qk_dim].float().view(count, qk_heads, s.head_dim // 2, 2))
            qk = torch.view_as_real(qk * rot).view(count, qk_heads, s.head_dim)
            k_cache, v_cache = cache.k[i], cache.v[i]
            k_cache[:, start:end] = qk[:, s.heads :].transpose(0, 1)
            v_cache[:, start:end] = qkv[:, qk_dim:].view(count, s.kv_heads, s.head_dim).transpose(0, 1)
            if count == 1:
                q = qk[0, : s.heads].view(s.kv_heads, self.group, s.head_dim)
                scores = torch.baddbmm(q.new_empty(()), q, k_cache[:, :end].transpose(1, 2), beta=0.0,
                                       alpha=self.scale)
                attn = torch.bmm(torch.softmax(scores, dim=-1), v_cache[:, :end]).view(1, self.q_dim)
            else:
                attn = self._prefill_attention(qk[:, : s.heads], k_cache[:, :end], v_cache[:, :end], start)
            h = h + layer.out(attn.to(torch.bfloat16))
            x = F.rms_norm(h, (s.hidden,), layer.mlp_norm, s.rms_eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate).mul_(up))
            if count > DENSE_ROWS and layer.dense_pages is not None:
                layer.dense_pages.release()  # the dense weights' pages leave the process's resident memory
        cache.length = end
        last = F.rms_norm(h[-1:], (s.hidden,), self.weights.norm, s.rms_eps)
        logits: torch.Tensor = self.weights.head(last)[0]
        if self.rescore:
            # int4 head: the RESCORE best candidates get their exact logits from the embedding's own rows, so the
            # greedy pick is the exact head's whenever that token is among them (a 4-bit error is far smaller)
            top = torch.topk(logits, RESCORE).indices
            exact = (self.weights.embed[top].float() @ last[0].float()).to(logits.dtype)
            logits.index_copy_(0, top, exact)
        return logits

    def _prefill_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
        """Causal attention of ``q`` [T, heads, D] (positions ``start ..``) over the cache, bf16 SDPA → [T, heads*D]."""
        count = q.shape[0]
        qh = q.transpose(0, 1).to(torch.bfloat16)[None]
        kh = keys.to(torch.bfloat16).repeat_interleave(self.group, dim=0)[None]
        vh = values.to(torch.bfloat16).repeat_interleave(self.group, dim=0)[None]
        if start == 0:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        else:
            rows = torch.arange(start, start + count)[:, None]
            mask = torch.arange(start + count)[None, :] <= rows
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        return out[0].transpose(0, 1).reshape(count, self.q_dim)


class _Doc:
    def __init__(self, ids: list[int], cache: KvCache) -> None:
        self.ids = ids
        self.cache = cache


class CpuRunner:
    """``CpuLlama`` with one ``KvCache`` per document (LRU of ``max_documents``), the runners' interface."""

    kind = "cpu-int4"
    uses_graph = False

    def __init__(self, model: CpuLlama, max_documents: int = 4) -> None:
        self.model = model
        self.max_documents = max(1, max_documents)
        self._docs: OrderedDict[str, _Doc] = OrderedDict()
        self._cache: KvCache | None = None

    def begin(self, doc_key: str | None, ids: Sequence[int]) -> int:
        doc = self._docs.pop(doc_key, None) if doc_key is not None else None
        if doc is None:
            self._cache = self.model.new_cache(len(ids) + 64)
            return 0
        keep = reusable_tokens(doc.ids, ids)
        doc.cache.length = keep  # positions past it are overwritten, never read
        self._cache = doc.cache
        return keep

    def _current(self) -> KvCache:
        if self._cache is None:
            raise RuntimeError("CpuRunner: prefill/step called outside begin/end")
        return self._cache

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        return self.model.forward(ids, self._current())

    def step(self, token: int) -> torch.Tensor:
        return self.model.forward((token,), self._current())

    def end(self, doc_key: str | None, cached_ids: list[int]) -> None:
        cache, self._cache = self._cache, None
        if doc_key is None or cache is None or cache.length != len(cached_ids):
            return  # nothing to keep (or a failed step left the cache out of step with the ids)
        self._docs[doc_key] = _Doc(cached_ids, cache)
        self._docs.move_to_end(doc_key)
        while len(self._docs) > self.max_documents:
            self._docs.popitem(last=False)

    def forget(self) -> None:
        self._docs.clear()
        self._cache = None
