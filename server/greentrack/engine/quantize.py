"""Weights of the CPU decode engine, read straight from a llama GGUF: its 4-bit blocks stay 4-bit.

Place in the flow: ``loading.load_cpu_model`` → ``read_gguf_llama(path)`` → ``LlamaWeights`` → ``cpu_decode.CpuLlama``.
No transformers model is built: each tensor is read from the file (``read_gguf``, a small reader of our own),
converted, and dropped. The output head is int4 too (re-scored exactly by ``cpu_decode``); the embedding stays
``Q8_0`` (``Q8Rows``). ``loading._convert_llama`` uses the same reader for the one-time safetensors folder.

The embedded model's GGUF stores every matrix of the 30 blocks as ``Q4_1`` (groups of 32 weights along the input
dimension, each ``w = d * q + m`` with ``q`` in 0..15 and fp16 ``d``, ``m``) and the token embedding as ``Q8_0``.
PyTorch's CPU int4 weight-only kernel (``aten._weight_int4pack_mm_for_cpu``) computes with groups of 32 and
``w = (q - 8) * scale + zero``: with ``scale = d`` and ``zero = m + 8 d`` it holds the GGUF's own numbers (the
scales rounded to bf16, the kernel's activation type), so this format is lossless with respect to the file,
and a decode step reads 0.625 bytes per weight instead of bf16's 2 (docs/architecture.md, "CPU engine").

A dense bf16 copy of each matrix (``Int4Linear.dense``, exactly ``bf16(d * q + m)``, the values the bf16
transformers model holds) serves long prefills, where bf16 matrix multiplies beat the int4 kernel (it is
tuned for a few rows). The loader keeps that copy in a file (``DenseFile``, written once per GGUF into its
converted folder) mapped into memory: a layer's pages come in from the page cache when a prefill multiplies
with them and are dropped right after the layer, so the ~200 MiB copy is never resident in the process all at
once (issue 15's peak-RSS goal; docs/benchmarks.md). The q/k rows keep the GGUF's order (rotary pairs interleaved:
llama.cpp's convention), which ``cpu_decode`` applies as a complex rotation.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from greentrack.errors import ModelLoadError

log = logging.getLogger(__name__)

#: Weights per quantization group (GGUF's Q4_1 and Q8_0 block size; a group size the int4 CPU kernel accepts).
GROUP = 32
_Q4_1_BYTES = 20  # fp16 d, fp16 m, 16 bytes of nibbles
_Q8_0_BYTES = 34  # fp16 d, 32 int8


@dataclass
class Int4Linear:
    """``y = x @ W.T`` with W held 4-bit (decode, short prefills) and, optionally, bf16 (long prefills)."""

    packed: torch.Tensor  # uint8 [N, K/2], PyTorch's CPU int4 layout
    scales_zeros: torch.Tensor  # bf16 [K/GROUP, N, 2]
    dense: torch.Tensor | None  # bf16 [N, K] or None
    out_features: int
    in_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: bf16 [M, K]. The int4 kernel for a few rows, the dense bf16 weights (when kept) for more."""
        if self.dense is not None and x.shape[0] > DENSE_ROWS:
            return torch.nn.functional.linear(x, self.dense)
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_zeros)
        return out


@dataclass(frozen=True)
class DensePages:
    """A byte range of a ``DenseFile``'s mapping, from a huge-page boundary: one layer's dense weights."""

    mapping: mmap.mmap
    offset: int
    length: int  # a multiple of the huge-page size

    def release(self) -> None:
        """Unmap the range's pages from this process (``MADV_DONTNEED``): they stay in the page cache, unchanged
        (the mapping is private and never written), and the next prefill maps them back in, 2 MiB at a time
        where the page cache holds them as huge folios (docs/benchmarks.md: no slower than resident weights)."""
        with suppress(AttributeError, OSError):  # no madvise (Windows): the pages stay mapped, as resident weights
            self.mapping.madvise(mmap.MADV_DONTNEED, self.offset, self.length)


class DenseFile:
    """The dense bf16 prefill weights of ``read_gguf_llama``'s block matrices, in their order, in a file of their
    own (``DENSE_FILE`` in the GGUF's converted folder, keyed by the GGUF's SHA-256): each layer's ``group``
    matrices from a 2 MiB boundary (so the layer's range maps as whole huge pages and is dropped without
    splitting one), each matrix from a page boundary. ``begin``/``take``/``attach`` write a temporary file
    matrix by matrix and rename it into place (concurrent loaders never see half a file); ``map`` returns each
    matrix as a tensor over a private mapping of the file, and each layer's ``DensePages``."""

    def __init__(self, path: Path, shapes: list[tuple[int, int]], group: int) -> None:
        self.path = path
        self.shapes = shapes
        self.group = group
        self.offsets: list[int] = []
        self.group_ranges: list[tuple[int, int]] = []  # (start, length) of each group's pages
        size = 0
        for index, (n, k) in enumerate(shapes):
            if index % group == 0:
                size = _round_up(size, _HUGE_PAGE)
                self.group_ranges.append((size, 0))
            self.offsets.append(size)
            size += _round_up(2 * n * k, mmap.PAGESIZE)
            start = self.group_ranges[-1][0]
            self.group_ranges[-1] = (start, _round_up(size - start, _HUGE_PAGE))
        self.size = _round_up(size, _HUGE_PAGE)
        self._tmp: BinaryIO | None = None
        self._tmp_path = path

    def complete(self) -> bool:
        """Whether the file exists with this layout's size (written whole: it is renamed into place)."""
        try:
            return self.path.stat().st_size == self.size
        except OSError:
            return False

    @property
    def writing(self) -> bool:
        return self._tmp is not None

    def begin(self) -> None:
        """Start writing a temporary file unless the file is there, complete (other versions' files removed)."""
        if self.complete():
            return
        for stale in self.path.parent.glob(DENSE_FILE_PATTERN):
            if stale.name != self.path.name and ".tmp-" not in stale.name:
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".tmp-")
        self._tmp, self._tmp_path = os.fdopen(fd, "w+b"), Path(tmp)
        self._tmp.truncate(self.size)

    def take(self, index: int, linear: Int4Linear) -> None:
        """While writing: matrix ``index``'s dense bf16 values [N, K] from ``linear`` into the file, and
        ``linear.dense`` dropped."""
        dense = linear.dense
        if self._tmp is None or dense is None:
            return
        if tuple(dense.shape) != self.shapes[index] or dense.dtype != torch.bfloat16:
            raise ValueError(f"dense matrix {index}: {tuple(dense.shape)} {dense.dtype}, not {self.shapes[index]}")
        self._tmp.seek(self.offsets[index])
        self._tmp.write(dense.contiguous().view(torch.uint8).numpy().data)
        linear.dense = None

    def attach(self, linears: list[Int4Linear]) -> list[DensePages]:
        """The file finished (when written) and mapped: each of ``linears`` gets its matrix; each group's pages."""
        self.end_write()
        tensors, groups = self.map()
        for linear, dense in zip(linears, tensors, strict=True):
            linear.dense = dense
        return groups

    def end_write(self) -> None:
        """Flush, sync and rename the temporary file into place. Its pages then leave the page cache: as written,
        most sit there in small folios (mapped 4 KiB at a time); read back by the first prefill through the
        huge-page mapping, they come in 2 MiB folios."""
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            tmp.flush()
            os.fsync(tmp.fileno())
            with suppress(OSError, AttributeError):
                os.posix_fadvise(tmp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            tmp.close()
            os.replace(self._tmp_path, self.path)
        finally:
            tmp.close()
            self._tmp_path.unlink(missing_ok=True)

    def abort_write(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp_path.unlink(missing_ok=True)
            self._tmp = None

    def map(self) -> tuple[list[torch.Tensor], list[DensePages]]:
        """Each matrix as a bf16 tensor over a private (copy-on-write, never written) mapping of the file, and
        each group's pages. The mapping asks for huge pages (``MADV_HUGEPAGE``): mapped in 4 KiB pages, a
        512-token prefill measured 1.2 % slower than with resident weights, in 2 MiB pages as fast
        (docs/benchmarks.md)."""
        with self.path.open("rb") as f:
            mapping = mmap.mmap(f.fileno(), self.size, access=mmap.ACCESS_COPY)
        with suppress(OSError, AttributeError):  # no transparent huge pages: 4 KiB pages, slightly slower
            mapping.madvise(mmap.MADV_HUGEPAGE)
        whole = torch.frombuffer(mapping, dtype=torch.uint8)
        tensors = [whole[offset : offset + 2 * n * k].view(torch.bfloat16).view(n, k)
                   for (n, k), offset in zip(self.shapes, self.offsets, strict=True)]
        return tensors, [DensePages(mapping, start, length) for start, length in self.group_ranges]


def _round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit


_HUGE_PAGE = 2 << 20  # x86-64's and arm64's (4 KiB base pages) transparent huge page
#: ``DenseFile``'s name in a GGUF's converted folder (the version names the layout: block order, q/k/v and
#: gate/up stacked, GGUF row order, bf16, layers from 2 MiB boundaries); other versions are removed.
DENSE_FILE = "cpu-prefill-bf16.v2.bin"
DENSE_FILE_PATTERN = "cpu-prefill-bf16.v*.bin"


@dataclass
class Int8Linear:
    """``y = x @ W.T`` with W int8, one scale per output row (``aten._weight_int8pack_mm``)."""

    weight: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # bf16 [N]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        return out


@dataclass
class BF16Linear:
    weight: torch.Tensor  # bf16 [N, K]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)


def int8_rows(weight: torch.Tensor) -> Int8Linear:
    """Symmetric int8 with one scale per row, from a float matrix [N, K]."""
    w = weight.float()
    scale = (w.abs().amax(-1) / 127.0).clamp_min(1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return Int8Linear(q, scale.to(torch.bfloat16))


class Q8Rows:
    """An embedding table kept in GGUF ``Q8_0`` blocks (1.06 bytes a weight); rows are dequantized on lookup."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks  # uint8 [N, K/32, 34]
        self.rows, self.cols = int(blocks.shape[0]), int(blocks.shape[1]) * GROUP

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        picked = self.blocks[ids]
        d = picked[..., :2].contiguous().view(torch.float16).float()
        q = picked[..., 2:].contiguous().view(torch.int8).float()
        return (q * d).reshape(-1, self.cols).to(torch.bfloat16)


#: Above this many rows a matrix multiply uses the dense bf16 weights (the int4 kernel's per-row cost is lowest
#: at a handful of rows and ~2-3x bf16's from a few dozen rows on; measured in bench/cpu_engine.py's notes).
DENSE_ROWS = 8


def int4_from_groups(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, keep_dense: bool) -> Int4Linear:
    """``q``: int32 [N, K] in 0..15; ``d``, ``m``: float32 [N, K/GROUP]; weights ``w = d * q + m``."""
    n, k = q.shape
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    zero = m + 8.0 * d
    scales_zeros = torch.stack([d.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
    dense = None
    if keep_dense:
        dense = (q.view(n, k // GROUP, GROUP).float() * d[..., None] + m[..., None]).view(n, k).to(torch.bfloat16)
    return Int4Linear(packed, scales_zeros, dense, n, k)


def min_max_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max 4-bit groups of 32 of a float matrix [N, K] → (q, d, m). Exact for a dequantized
    Q4_1 matrix whose groups use both ends of the range, as llama.cpp's quantizer makes them."""
    n, k = weight.shape
    if k % GROUP:
        raise ModelLoadError(f"matrix with {k} columns is not a multiple of {GROUP}: no int4 CPU weights")
    w = weight.float().view(n, k // GROUP, GROUP)
    lo, hi = w.amin(-1), w.amax(-1)
    d = (hi - lo) / 15.0
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = torch.clamp(torch.round((w - lo[..., None]) / safe[..., None]), 0, 15).to(torch.int32).view(n, k)
    return q, d, lo


def q4_1_groups(raw: np.ndarray[Any, Any], n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF ``Q4_1`` bytes [N, K/32*20] → (q int32 [N, K], d float32 [N, K/32], m float32 [N, K/32])."""
    blocks = raw.reshape(n, k // GROUP, _Q4_1_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[..., 4:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).reshape(n, k).astype(np.int32)
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(m)


def q8_0_dense(raw: np.ndarray[Any, Any], n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """GGUF ``Q8_0`` bytes → a dense matrix ``d * q`` [N, K] (computed in float32, then ``dtype``)."""
    blocks = raw.reshape(n, k // GROUP, _Q8_0_BYTES)
    out = torch.empty((n, k), dtype=dtype)
    step = 4096  # rows at a time: the float32 intermediate stays small
    for start in range(0, n, step):
        part = blocks[start : start + step]
        d = part[..., 0:2].copy().view(np.float16).astype(np.float32)
        q = part[..., 2:].view(np.int8).astype(np.float32)
        out[start : start + step] = torch.from_numpy((q * d).reshape(-1, k)).to(dtype)
    return out


@dataclass(frozen=True)
class LlamaShape:
    """The architecture numbers of a llama-family model, as its GGUF header states them."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context_length: int


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # bf16 [hidden]
    qkv: Int4Linear  # q, k, v stacked: [(heads + 2 kv_heads) * head_dim, hidden]
    out: Int4Linear
    mlp_norm: torch.Tensor
    gate_up: Int4Linear  # gate, up stacked: [2 * intermediate, hidden]
    down: Int4Linear
    dense_pages: DensePages | None = None  # the dense matrices' pages when mapped (``DenseFile``): dropped after use


Head = Int4Linear | Int8Linear | BF16Linear
#: The output head's formats (``GREENTRACK_CPU_HEAD``); docs/architecture.md says why int4 is the default.
HEAD_FORMATS = ("int4", "int8", "bf16")


@dataclass
class LlamaWeights:
    shape: LlamaShape
    embed: Q8Rows | torch.Tensor  # [vocab, hidden]: looked up by row
    layers: list[LayerWeights]
    norm: torch.Tensor  # bf16 [hidden]
    head: Head  # the output projection (the embedding's matrix when tied)
    head_is_embed: bool = True  # tied: ``embed`` holds the head's exact rows (``cpu_decode`` re-scores with them)


# ---------------------------------------------------------------------------------------------- a small GGUF reader

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
#: ggml type → (name, weights per block, bytes per block) for the types this engine reads.
_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}


@dataclass
class GgufTensor:
    """One tensor of a GGUF file; ``data`` reads its bytes (a read, not a memory map: pages of a mapped file
    would count in the process's resident memory for as long as the mapping lives)."""

    name: str
    kind: str  # F32, F16, BF16, Q4_1, Q8_0
    rows: int  # N (output features; 1 for a vector)
    cols: int  # K (the GGUF's first dimension, contiguous)
    path: Path
    offset: int
    row_bytes: int

    @property
    def data(self) -> np.ndarray[Any, Any]:
        """uint8 [rows, bytes per row]."""
        raw = np.fromfile(self.path, dtype=np.uint8, count=self.rows * self.row_bytes, offset=self.offset)
        return raw.reshape(self.rows, self.row_bytes)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, GgufTensor]]:
    """The scalar header keys and the tensors of a GGUF file (arrays such as the vocabulary are skipped: the
    ``gguf`` package's reader builds Python objects for each of them, ~300 MiB and ~4 s for a 49k vocabulary)."""
    with path.open("rb") as f:
        reader = _GgufReader(path, f)
        n_tensors, n_keys = reader.preamble()
        meta = reader.metadata(n_keys)
        infos = reader.tensor_infos(n_tensors)
        align = int(meta.get("general.alignment") or 32)
        base = -(-f.tell() // align) * align
    return meta, _gguf_tensors(path, infos, base)


#: A tensor's entry in the GGUF header: (name, dimensions, ggml type, offset from the data section).
_TensorInfo = tuple[str, list[int], int, int]


class _GgufReader:
    """Reads the header of an open GGUF file in order: preamble, key/value metadata, tensor infos."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self.f = f

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.f.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.f.read(self.scalar("<Q")).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        """A metadata value of ggml value type ``kind``; arrays are skipped (``None``)."""
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            self._skip_array()
            return None
        raise ModelLoadError(f"{self.path}: unknown GGUF value type {kind}")

    def _skip_array(self) -> None:
        """Past an array value: scalars by seeking, strings and nested arrays by reading each item."""
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in _SCALARS:
            self.f.seek(count * struct.calcsize(_SCALARS[item]), 1)
        else:
            for _ in range(count):
                self.value(item)

    def preamble(self) -> tuple[int, int]:
        """Magic and version checked; (tensor count, metadata key count)."""
        if self.f.read(4) != b"GGUF":
            raise ModelLoadError(f"{self.path} is not a GGUF file")
        version, n_tensors, n_keys = self.scalar("<I"), self.scalar("<Q"), self.scalar("<Q")
        if version < 2:
            raise ModelLoadError(f"{self.path}: GGUF version {version} is too old")
        return n_tensors, n_keys

    def metadata(self, n_keys: int) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for _ in range(n_keys):
            key = self.string()
            meta[key] = self.value(self.scalar("<I"))
        return meta

    def tensor_infos(self, n_tensors: int) -> list[_TensorInfo]:
        infos: list[_TensorInfo] = []
        for _ in range(n_tensors):
            name = self.string()
            dims = [self.scalar("<Q") for _ in range(self.scalar("<I"))]
            infos.append((name, dims, self.scalar("<I"), self.scalar("<Q")))
        return infos


def _gguf_tensors(path: Path, infos: list[_TensorInfo], base: int) -> dict[str, GgufTensor]:
    """The header's tensor infos → ``GgufTensor``s at ``base`` (the aligned start of the data section);
    ``ModelLoadError`` for a ggml type this engine does not read."""
    tensors: dict[str, GgufTensor] = {}
    for name, dims, kind, offset in infos:
        if kind not in _TYPES:
            raise ModelLoadError(f"{path}: tensor {name} has ggml type {kind}, which this engine does not read")
        label, per_block, block_bytes = _TYPES[kind]
        cols, rows = int(dims[0]), int(np.prod(dims[1:])) if len(dims) > 1 else 1
        row_bytes = cols // per_block * block_bytes
        tensors[name] = GgufTensor(name, label, rows, cols, path, base + offset, row_bytes)
    return tensors


def read_gguf_shape(meta: dict[str, Any], tensors: dict[str, GgufTensor]) -> LlamaShape:
    """The ``llama.*`` header keys; ``ModelLoadError`` for other architectures or features this engine lacks."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"the CPU int4 engine runs llama-architecture GGUFs, not {arch!r}")
    if meta.get("llama.rope.scaling.type") not in (None, "none") or meta.get("llama.rope.scaling.factor"):
        raise ModelLoadError("the CPU int4 engine does not implement rope scaling")
    hidden = int(meta["llama.embedding_length"])
    heads = int(meta["llama.attention.head_count"])
    return LlamaShape(
        layers=int(meta["llama.block_count"]),
        hidden=hidden,
        intermediate=int(meta["llama.feed_forward_length"]),
        heads=heads,
        kv_heads=int(meta.get("llama.attention.head_count_kv") or heads),
        head_dim=int(meta.get("llama.rope.dimension_count") or hidden // heads),
        vocab=tensors["token_embd.weight"].rows,
        rope_theta=float(meta.get("llama.rope.freq_base") or 10000.0),
        rms_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon") or 1e-5),
        context_length=int(meta.get("llama.context_length") or 2048),
    )


def _groups(tensor: GgufTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A GGUF matrix → 4-bit groups (q, d, m); Q4_1 exactly, other types re-quantized from float."""
    if tensor.kind == "Q4_1":
        return q4_1_groups(tensor.data, tensor.rows, tensor.cols)
    return min_max_groups(dense_tensor(tensor, torch.float32))


def dense_tensor(tensor: GgufTensor, dtype: torch.dtype) -> torch.Tensor:
    """A GGUF tensor dequantized (float32 arithmetic) into ``dtype``: a matrix [N, K] or a vector [K]."""
    n, k = tensor.rows, tensor.cols
    if tensor.kind == "Q8_0":
        return q8_0_dense(tensor.data, n, k, dtype)
    raw = tensor.data
    if tensor.kind == "F32":
        out = torch.from_numpy(raw.view(np.float32).copy())
    elif tensor.kind == "F16":
        out = torch.from_numpy(raw.view(np.float16).astype(np.float32))
    elif tensor.kind == "BF16":
        out = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16)
    else:
        q, d, m = q4_1_groups(raw, n, k)
        out = (q.view(n, k // GROUP, GROUP).float() * d[..., None] + m[..., None]).view(n, k)
    shaped = out.reshape(n, k) if n > 1 else out.reshape(k)
    return shaped.to(dtype)


#: Each layer's matrices as GGUF tensor names (several: stacked into one matrix), in ``LayerWeights``' order.
_LAYER_MATRICES = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))


def read_gguf_llama(
    path: Path, keep_dense: bool = True, head_format: str = "int4", dense_file: Path | None = None
) -> LlamaWeights:
    """Read a llama GGUF into ``LlamaWeights`` (one tensor at a time, read, converted, dropped).

    ``keep_dense``: the dense bf16 copy for long prefills, mapped from ``dense_file`` (``DenseFile``: written
    on the first load, reused afterwards) or, without a file or when it cannot be written, held in memory.
    """
    try:
        meta, tensors = read_gguf(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not a GGUF file this engine can read: {e}") from e
    shape = read_gguf_shape(meta, tensors)
    if keep_dense and dense_file is not None:
        try:
            return _read_llama(path, tensors, shape, head_format, False, _dense_file(dense_file, tensors, shape))
        except OSError as e:
            log.warning("cannot keep the dense prefill weights in %s (%s): holding them in memory", dense_file, e)
    return _read_llama(path, tensors, shape, head_format, keep_dense, None)


def _dense_file(path: Path, tensors: dict[str, GgufTensor], shape: LlamaShape) -> DenseFile:
    """The ``DenseFile`` layout of ``tensors``' block matrices (``_LAYER_MATRICES`` of each layer)."""
    shapes = []
    for i in range(shape.layers):
        for names in _LAYER_MATRICES:
            parts = [tensors[f"blk.{i}.{name}.weight"] for name in names]
            shapes.append((sum(t.rows for t in parts), parts[0].cols))
    return DenseFile(path, shapes, len(_LAYER_MATRICES))


def _read_llama(
    path: Path, tensors: dict[str, GgufTensor], shape: LlamaShape, head_format: str, keep_dense: bool,
    dense_file: DenseFile | None,
) -> LlamaWeights:
    """``read_gguf_llama`` past the header: dense copies in memory (``keep_dense``) or in ``dense_file``."""
    linears: list[Int4Linear] = []

    def linear(layer: int, names: tuple[str, ...]) -> Int4Linear:
        parts = [_groups(tensors[f"blk.{layer}.{name}.weight"]) for name in names]
        q = torch.cat([p[0] for p in parts])
        d = torch.cat([p[1] for p in parts])
        m = torch.cat([p[2] for p in parts])
        made = int4_from_groups(q, d, m, keep_dense or (dense_file is not None and dense_file.writing))
        if dense_file is not None:
            dense_file.take(len(linears), made)
        linears.append(made)
        return made

    try:
        if dense_file is not None:
            dense_file.begin()
        layers = []
        for i in range(shape.layers):
            b = f"blk.{i}."
            qkv, out, gate_up, down = (linear(i, names) for names in _LAYER_MATRICES)
            layers.append(LayerWeights(
                attn_norm=dense_tensor(tensors[b + "attn_norm.weight"], torch.bfloat16),
                qkv=qkv, out=out,
                mlp_norm=dense_tensor(tensors[b + "ffn_norm.weight"], torch.bfloat16),
                gate_up=gate_up, down=down,
            ))
        if dense_file is not None:
            for layer, pages in zip(layers, dense_file.attach(linears), strict=True):
                layer.dense_pages = pages
        token_embd = tensors["token_embd.weight"]
        embed = _embedding(token_embd)
        output = tensors.get("output.weight")
        head = _head(output or token_embd, head_format)
        norm = dense_tensor(tensors["output_norm.weight"], torch.bfloat16)
    except KeyError as e:
        raise ModelLoadError(f"{path}: tensor {e} missing for a llama model") from e
    except (ValueError, NotImplementedError) as e:
        raise ModelLoadError(f"{path}: a tensor type this engine cannot read: {e}") from e
    finally:
        if dense_file is not None:
            dense_file.abort_write()  # a no-op once written
    return LlamaWeights(shape, embed, layers, norm, head, head_is_embed=output is None)


def _embedding(token_embd: GgufTensor) -> Q8Rows | torch.Tensor:
    """The token embedding: ``Q8_0`` blocks kept as they are (``Q8Rows``), other types dense bf16."""
    if token_embd.kind == "Q8_0":
        raw = torch.from_numpy(token_embd.data).view(token_embd.rows, token_embd.cols // GROUP, _Q8_0_BYTES)
        return Q8Rows(raw)
    return dense_tensor(token_embd, torch.bfloat16)


def _row_chunks(tensor: GgufTensor, rows: int = 4096) -> Iterator[GgufTensor]:
    """``tensor`` as slices of ``rows`` rows (a multiple of 64: the int4 packing of row slices then equals that
    of the whole matrix), so no float32 copy of a large matrix is ever whole in memory."""
    for start in range(0, tensor.rows, rows):
        count = min(rows, tensor.rows - start)
        yield GgufTensor(tensor.name, tensor.kind, count, tensor.cols, tensor.path,
                         tensor.offset + start * tensor.row_bytes, tensor.row_bytes)


def _head(tensor: GgufTensor, head_format: str) -> Head:
    """The output projection in ``head_format`` (int4 groups, int8 rows, or bf16), from any GGUF matrix type."""
    if head_format == "bf16":
        return BF16Linear(dense_tensor(tensor, torch.bfloat16))
    if head_format == "int4":
        parts = [int4_from_groups(*_groups(chunk), keep_dense=False) for chunk in _row_chunks(tensor)]
        return Int4Linear(torch.cat([p.packed for p in parts]), torch.cat([p.scales_zeros for p in parts], dim=1),
                          None, tensor.rows, tensor.cols)
    if head_format != "int8":
        raise ModelLoadError(f"unknown output head format {head_format!r} (use one of {', '.join(HEAD_FORMATS)})")
    int8_parts = [int8_rows(dense_tensor(chunk, torch.float32).reshape(chunk.rows, chunk.cols))
                  for chunk in _row_chunks(tensor)]
    return Int8Linear(torch.cat([p.weight for p in int8_parts]), torch.cat([p.scales for p in int8_parts]))
