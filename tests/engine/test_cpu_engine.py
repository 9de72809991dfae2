"""The int4 CPU engine (engine/cpu_decode.py, engine/quantize.py) on the real embedded model."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from greentrack.engine.cpu_decode import RESCORE, CpuLlama, CpuRunner, KvCache
from greentrack.engine.loading import LoadedModel, load_cpu_model, load_model, resolve_model, use_cpu_engine
from greentrack.engine.quality import first_line, first_line_agreement, stdlib_points, suggestions
from greentrack.engine.quantize import GROUP, int4_from_groups, q4_1_groups, read_gguf, read_gguf_llama
from greentrack.engine.transformers_backend import TransformersBackend
from greentrack.engine.types import CancelToken, CompletionRequest

#: The quality gate on a small fixed set (the benchmark prints it on 200 points).
GATE_POINTS = 20
GATE_MIN_BF16_AGREEMENT = 0.75
GATE_FP32_SLACK = 0.10  # 2 points of 20: on 200 points int4 agreed with float32 at 81 %, bf16 at 83 %


@pytest.fixture(scope="module")
def cpu_loaded() -> LoadedModel:
    return load_cpu_model(resolve_model("embedded"))


@pytest.fixture(scope="module")
def cpu_backend(cpu_loaded: LoadedModel) -> Iterator[TransformersBackend]:
    b = TransformersBackend(loaded=cpu_loaded, warmup=False)
    yield b
    b.close()


def code_ids(loaded: LoadedModel, count: int) -> list[int]:
    import json.encoder

    text = Path(json.encoder.__file__).read_text()
    ids: list[int] = loaded.tokenizer(text)["input_ids"][:count]
    assert len(ids) == count
    return ids


def test_int4_kernel_holds_the_q4_1_values() -> None:
    gen = torch.Generator().manual_seed(0)
    n, k = 64, 96
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
    d = torch.rand(n, k // GROUP, generator=gen) * 0.02
    m = -torch.rand(n, k // GROUP, generator=gen) * 0.1
    w = (q.view(n, k // GROUP, GROUP).float() * d[..., None] + m[..., None]).view(n, k)
    linear = int4_from_groups(q, d, m, keep_dense=True)
    x = torch.randn(3, k, generator=gen).to(torch.bfloat16)
    expected = x.float() @ w.t()
    assert linear.dense is not None and torch.equal(linear.dense, w.to(torch.bfloat16))
    assert torch.allclose(linear(x).float(), expected, atol=0.02, rtol=0.02)  # 3 rows: the int4 kernel
    many = torch.randn(40, k, generator=gen).to(torch.bfloat16)  # more rows: the dense bf16 weights
    assert torch.allclose(linear(many).float(), many.float() @ w.t(), atol=0.02, rtol=0.02)


def test_q4_1_block_layout() -> None:
    # one row, one block: d = 0.5, m = -1, element j holds j % 16 (low nibbles first, then high nibbles)
    values = [j % 16 for j in range(32)]
    nibbles = bytes(values[i] | (values[i + 16] << 4) for i in range(16))
    raw = np.frombuffer(struct.pack("<ee", 0.5, -1.0) + nibbles, dtype=np.uint8).reshape(1, 20)
    q, d, m = q4_1_groups(raw, 1, 32)
    assert q[0].tolist() == values and d.item() == 0.5 and m.item() == -1.0


def test_reads_the_embedded_gguf_header() -> None:
    meta, tensors = read_gguf(resolve_model("embedded").path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    assert tensors["blk.0.attn_q.weight"].kind == "Q4_1" and tensors["token_embd.weight"].rows == 49152


def test_matches_the_transformers_model(cpu_loaded: LoadedModel, loaded: LoadedModel) -> None:
    """Same next token as the float32 transformers model at the prompt's end and over 40 teacher-forced steps."""
    model: CpuLlama = cpu_loaded.model
    ids = code_ids(cpu_loaded, 240)
    with torch.inference_mode():
        reference = loaded.model(input_ids=torch.tensor([ids])).logits[0].float()
        cache = model.new_cache()
        last = model.forward(ids, cache).float()
        assert int(last.argmax()) == int(reference[-1].argmax())
        top = last.topk(RESCORE).indices  # exact head rows (the other logits are the int4 head's estimates)
        assert (last[top] - reference[-1][top]).abs().max() < 0.05 * reference[-1].abs().max()
        assert (last - reference[-1]).abs().max() < 0.25 * reference[-1].abs().max()
        cache = model.new_cache()
        model.forward(ids[:200], cache)
        agree = sum(int(model.forward([ids[i]], cache).argmax()) == int(reference[i].argmax()) for i in range(200, 240))
    assert agree >= 38  # bf16 activations flip a near-tie now and then


def test_cache_grows_without_changing_results(cpu_loaded: LoadedModel) -> None:
    model: CpuLlama = cpu_loaded.model
    ids = code_ids(cpu_loaded, 300)
    with torch.inference_mode():
        small, big = model.new_cache(16), model.new_cache(512)
        a = [model.forward(ids[:280], small)] + [model.forward([t], small) for t in ids[280:]]
        b = [model.forward(ids[:280], big)] + [model.forward([t], big) for t in ids[280:]]
    assert small.capacity >= 300 and small.length == big.length == 300
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    grown = KvCache(2, 1, 4, capacity=4)
    grown.k[:, :, :3] = 1.0
    grown.length = 3
    grown.reserve(600)
    assert grown.capacity >= 600 and bool((grown.k[:, :, :3] == 1.0).all())


def test_runner_reuse_and_backend_output(cpu_backend: TransformersBackend) -> None:
    import json.decoder

    assert isinstance(cpu_backend.runner, CpuRunner)
    src = Path(json.decoder.__file__).read_text()[:3000]
    first = cpu_backend.complete(req(src, len(src) - 200, "r1"), CancelToken())
    again = cpu_backend.complete(req(src, len(src) - 199, "r2"), CancelToken())
    fresh = TransformersBackend(loaded=cpu_backend.loaded, warmup=False, reuse=False)
    alone = fresh.complete(req(src, len(src) - 199, "r3"), CancelToken())
    assert first.text and again.text and again.reused_prompt_tokens > 100 and alone.reused_prompt_tokens == 0
    # reused keys were computed by the dense bf16 prefill, the remainder by the int4 kernel: the same first
    # token, logits within bf16 noise (later tokens may part at a near tie, so the texts are not compared)
    prompt = cpu_backend.build_prompt(req(src, len(src) - 199, "r4"))
    model: CpuLlama = cpu_backend.model
    keep = again.reused_prompt_tokens
    with torch.inference_mode():
        full = model.forward(prompt.ids, model.new_cache()).float()
        cache = model.new_cache()
        model.forward(prompt.ids[:keep], cache)
        reused = model.forward(prompt.ids[keep:], cache).float()
    top = full.topk(RESCORE).indices
    assert int(full.argmax()) == int(reused.argmax())
    assert (full[top] - reused[top]).abs().max() < 0.05 * full.abs().max()
    assert again.extras["runner"] == "cpu-int4" and again.extras["dtype"] == "int4"
    pre = again.span("prefill")
    assert pre is not None and pre.work == again.prompt_tokens - again.reused_prompt_tokens


def test_default_cpu_load_takes_the_int4_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    source = resolve_model("embedded")
    cpu = torch.device("cpu")
    monkeypatch.delenv("GREENTRACK_DTYPE", raising=False)
    monkeypatch.delenv("GREENTRACK_CPU_ENGINE", raising=False)
    assert use_cpu_engine(source, cpu, None)
    assert not use_cpu_engine(source, cpu, "float32")  # a dtype names the transformers model
    assert not use_cpu_engine(source, torch.device("cuda"), None)
    monkeypatch.setenv("GREENTRACK_CPU_ENGINE", "transformers")
    assert not use_cpu_engine(source, cpu, None)


def test_quality_gate(cpu_backend: TransformersBackend, loaded: LoadedModel) -> None:
    """At fixed stdlib points, the int4 engine's first lines agree with the float32 model's (the GGUF's exact
    values) about as often as the bf16 model's do (at most 2 points of 20 fewer), and with bf16's at >= 75 %.

    Not ">= 95 % equal to bf16": bf16 itself agrees with float32 at only 83 % of 200 points (near-ties flip with
    any change of rounding), so no engine that is not bf16 bit for bit passes that (docs/benchmarks.md).
    """
    points = stdlib_points(GATE_POINTS)
    assert len(points) == GATE_POINTS
    bf16 = TransformersBackend(loaded=load_model(resolve_model("embedded"), "cpu", "bfloat16"), warmup=False)
    fp32 = TransformersBackend(loaded=loaded, warmup=False)
    texts = {name: suggestions(b, points, max_tokens=24, context_tokens=384)
             for name, b in (("bf16", bf16), ("fp32", fp32), ("int4", cpu_backend))}
    assert sum(bool(first_line(s)) for s in texts["fp32"]) >= GATE_POINTS // 2  # the points do produce code
    int4_fp32 = first_line_agreement(texts["fp32"], texts["int4"])
    bf16_fp32 = first_line_agreement(texts["fp32"], texts["bf16"])
    assert int4_fp32 >= bf16_fp32 - GATE_FP32_SLACK, (int4_fp32, bf16_fp32)
    assert first_line_agreement(texts["bf16"], texts["int4"]) >= GATE_MIN_BF16_AGREEMENT


def req(text: str, cursor: int, rid: str) -> CompletionRequest:
    return CompletionRequest(request_id=rid, document_key="doc", text=text[:cursor], offset=cursor, max_tokens=24,
                             max_time_s=60.0)


def test_weights_without_dense_copy() -> None:
    weights = read_gguf_llama(resolve_model("embedded").path, keep_dense=False, head_format="int8")
    assert all(layer.qkv.dense is None for layer in weights.layers)
    model = CpuLlama(weights)
    assert not model.rescore  # only an int4 head is re-scored
    with torch.inference_mode():
        assert model.forward([1, 2, 3], model.new_cache()).shape == (weights.shape.vocab,)
