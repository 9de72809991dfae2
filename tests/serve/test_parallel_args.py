"""``greentrack serve --tensor-parallel-size N --data-parallel-size M``: the tensor size reaches vLLM's engine
arguments, each of the M replicas gets its own N GPUs, the backend names every GPU its engine uses, and the energy
monitor meters those GPUs (through CUDA_VISIBLE_DEVICES).
``--async-scheduling/--no-async-scheduling`` reaches them as ``async_scheduling`` (unset: left out, vLLM decides).
No GPU here: vLLM's modules are not needed for the arithmetic (a ``VllmModules`` of a CUDA build, without classes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tests.serve.support import greentrack

from greentrack.energy.nvml import cuda_to_nvml_ids
from greentrack.engine.vllm_setup import VllmModules, engine_args, engine_device, engine_gpus, engine_process_gpus
from greentrack.errors import BackendUnavailable, UsageError
from greentrack.pipeline import _gpu_indices
from greentrack.serve.replicas import replica_gpus
from greentrack.serve.run import ServeOptions

CUDA_BUILD = VllmModules("0.26.0", None, None, None, None, "cuda")


def _args(options: ServeOptions) -> dict[str, object]:
    """What ``VllmBackend(**options.backend_kwargs("vllm"))`` hands ``engine_args`` (its defaults beside)."""
    kwargs = options.backend_kwargs("vllm")
    kwargs.pop("engine_process")  # the backend's, not the engine's
    return engine_args(Path("/models/m"), CUDA_BUILD, max_model_len=4096, max_num_seqs=kwargs.pop("max_num_seqs", 8),
                       enforce_eager=None, dtype=None, logits_processors=[],
                       engine_kwargs=kwargs.pop("engine_kwargs", None), **kwargs)


def test_one_gpu_by_default() -> None:
    args = _args(ServeOptions())
    assert "tensor_parallel_size" not in args and "data_parallel_size" not in args
    assert engine_gpus(args) == 1
    assert engine_device("auto", CUDA_BUILD, gpus=engine_gpus(args)) == "cuda:0"
    assert _gpu_indices("cuda:0") == [0]


def test_tensor_parallel_two_meters_gpus_zero_and_one(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(ServeOptions(tensor_parallel_size=2, max_num_seqs=32))
    assert args["tensor_parallel_size"] == 2 and args["max_num_seqs"] == 32 and "data_parallel_size" not in args
    device = engine_device("auto", CUDA_BUILD, gpus=engine_gpus(args))
    assert device == "cuda:0,1"
    assert _gpu_indices(device) == [0, 1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_to_nvml_ids(_gpu_indices(device) or []) == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the GPUs the engine sees are NVML's 2 and 3
    assert cuda_to_nvml_ids(_gpu_indices(device) or []) == [2, 3]


def test_vllms_own_data_parallelism_is_refused_before_anything_loads() -> None:
    """vLLM's data parallelism through greentrack's synchronous engine hung at start on two H200s: asked through
    --engine-arg it is refused, saying what to run instead, rather than a server that never answers while holding
    the GPUs. ``--data-parallel-size`` runs greentrack's own replicas (``serve.replicas``), never vLLM's."""
    assert "data_parallel_size" not in ServeOptions(data_parallel_size=2).backend_kwargs("vllm")
    with pytest.raises(BackendUnavailable, match="greentrack serve --data-parallel-size"):
        engine_args(Path("/models/m"), CUDA_BUILD, max_model_len=4096, max_num_seqs=8, enforce_eager=None,
                    dtype=None, logits_processors=[], engine_kwargs={"data_parallel_size": 2})
    assert engine_gpus({"tensor_parallel_size": 4}) == 4
    assert _gpu_indices(engine_device("cuda", CUDA_BUILD, gpus=4)) == [0, 1, 2, 3]


def test_replicas_are_refused_where_they_cannot_run() -> None:
    """Replicas need vLLM on GPUs with the engine core in a process of its own: refused before the store or a
    model opens (the database below is never created), with why, exit 2."""
    with pytest.raises(UsageError, match="drop --no-engine-process"):
        ServeOptions(data_parallel_size=2, engine_process=False).backend_kwargs("vllm")
    with pytest.raises(UsageError, match="need --backend vllm"):
        ServeOptions(data_parallel_size=2).backend_kwargs("transformers")
    for extra, said in ((("--device", "cpu"), "needs GPUs"), (("--device", "cuda:1"), "CUDA_VISIBLE_DEVICES"),
                        ((), "this vLLM build runs on cpu")):
        if not extra and importlib.util.find_spec("vllm") is None:
            continue  # without vLLM: its own "not installed" line, tested elsewhere
        done = greentrack("serve", "--backend", "vllm", "--data-parallel-size", "2", *extra, "--port", "1",
                          "--db", "/nonexistent/never-opened.db", timeout_s=120)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_each_replica_gets_its_own_gpus_metered_through_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica r of tensor parallel size T runs on this process's ordinals r·T … r·T+T−1: its engine process sees
    only those (``CUDA_VISIBLE_DEVICES``), and its monitor meters the same GPUs through NVML's numbering."""
    assert replica_gpus(2, 1) == [[0], [1]]
    assert replica_gpus(2, 2) == [[0, 1], [2, 3]]
    device = engine_device("auto", CUDA_BUILD, gpus=1, ordinals=[1])
    assert device == "cuda:1" and _gpu_indices(device) == [1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert engine_process_gpus([1]) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert cuda_to_nvml_ids(_gpu_indices(device) or []) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,GPU-5e3f")  # this process sees NVML's 4 and 6 and one by UUID
    assert engine_process_gpus([1]) == {"CUDA_VISIBLE_DEVICES": "6"}
    assert cuda_to_nvml_ids(_gpu_indices(device) or []) == [6]
    assert engine_process_gpus([1, 2]) == {"CUDA_VISIBLE_DEVICES": "6,GPU-5e3f"}
    assert _gpu_indices(engine_device("auto", CUDA_BUILD, gpus=2, ordinals=[2, 3])) == [2, 3]
    with pytest.raises(BackendUnavailable, match="not among CUDA_VISIBLE_DEVICES"):
        engine_process_gpus([3])


def test_parallel_sizes_need_the_vllm_backend() -> None:
    with pytest.raises(UsageError, match="need --backend vllm"):
        ServeOptions(tensor_parallel_size=2).backend_kwargs("transformers")
    assert ServeOptions().backend_kwargs("transformers") == {}
    done = greentrack("serve", "--backend", "transformers", "--tensor-parallel-size", "2", "--port", "1",
                      "--db", "/nonexistent/never-opened.db")
    assert done.returncode == 2 and "need --backend vllm" in done.stderr and "Traceback" not in done.stderr
    zero = greentrack("serve", "--backend", "vllm", "--data-parallel-size", "0")
    assert zero.returncode == 2 and "--data-parallel-size" in zero.stderr


def test_async_scheduling_reaches_the_engine_args_only_when_set() -> None:
    assert "async_scheduling" not in _args(ServeOptions())  # vLLM's own choice
    assert "async_scheduling" not in ServeOptions().backend_kwargs("vllm")
    for asked in (True, False):
        assert ServeOptions(async_scheduling=asked).backend_kwargs("vllm") == {"async_scheduling": asked,
                                                                               "engine_process": None}
        assert _args(ServeOptions(async_scheduling=asked))["async_scheduling"] is asked


def test_the_engine_process_is_the_backends_choice_unless_asked() -> None:
    """``serve`` leaves it to the backend (None: on where vLLM runs on GPUs); the flags say yes or no."""
    assert ServeOptions().backend_kwargs("vllm")["engine_process"] is None
    for asked in (True, False):
        assert ServeOptions(engine_process=asked).backend_kwargs("vllm")["engine_process"] is asked
        with pytest.raises(UsageError, match="need --backend vllm"):
            ServeOptions(engine_process=asked).backend_kwargs("transformers")


@pytest.mark.parametrize("flag", ["--async-scheduling", "--no-async-scheduling"])
def test_async_scheduling_needs_the_vllm_backend(flag: str) -> None:
    with pytest.raises(UsageError, match="need --backend vllm"):
        ServeOptions(async_scheduling=flag == "--async-scheduling").backend_kwargs("transformers")
    done = greentrack("serve", "--backend", "transformers", flag, "--port", "1",
                      "--db", "/nonexistent/never-opened.db")
    assert done.returncode == 2 and "need --backend vllm" in done.stderr and "Traceback" not in done.stderr
    assert "--async-scheduling" in done.stderr


def test_engine_args_reach_the_engine_over_the_defaults() -> None:
    from greentrack.serve.cli import parse_engine_args

    extra = parse_engine_args(['compilation_config={"cudagraph_mode": "FULL"}', "max-num-batched-tokens=2048",
                               "enforce_eager=true", "kv_cache_dtype=fp8"])
    assert extra == (("compilation_config", {"cudagraph_mode": "FULL"}), ("max_num_batched_tokens", 2048),
                     ("enforce_eager", True), ("kv_cache_dtype", "fp8"))
    args = _args(ServeOptions(engine_kwargs=extra))
    assert args["compilation_config"] == {"cudagraph_mode": "FULL"} and args["max_num_batched_tokens"] == 2048
    assert args["enforce_eager"] is True and args["kv_cache_dtype"] == "fp8"
    assert args["disable_log_stats"] is False  # per-request stats stay on whatever is asked
    assert "engine_kwargs" not in ServeOptions().backend_kwargs("vllm")


def test_engine_arg_needs_key_value_and_the_vllm_backend() -> None:
    from greentrack.serve.cli import parse_engine_args

    for bad in ("no_equals", "=3", "bad key=1"):
        with pytest.raises(UsageError, match="KEY=VALUE"):
            parse_engine_args([bad])
    with pytest.raises(UsageError, match="need --backend vllm"):
        ServeOptions(engine_kwargs=(("x", 1),)).backend_kwargs("transformers")
    done = greentrack("serve", "--backend", "transformers", "--engine-arg", "enforce_eager=true", "--port", "1")
    assert done.returncode == 2 and "--engine-arg" in done.stderr


def test_gpu_engines_capture_graphs_for_prefill_sized_steps() -> None:
    from greentrack.engine.vllm_setup import GRAPH_CAPTURE_TOKENS

    assert _args(ServeOptions())["compilation_config"] == {"max_cudagraph_capture_size": GRAPH_CAPTURE_TOKENS}
    assert GRAPH_CAPTURE_TOKENS >= 512  # keystroke prefills after a cached prefix, and a cold 1,000-token window
    own = _args(ServeOptions(engine_kwargs=(("compilation_config", {"cudagraph_mode": "FULL"}),)))
    assert own["compilation_config"] == {"cudagraph_mode": "FULL"}  # the user's replaces ours
    cpu = engine_args(Path("/m"), VllmModules("0.32.0", None, None, None, None, "cpu"), max_model_len=4096,
                      max_num_seqs=8, enforce_eager=None, dtype="float32", logits_processors=[], engine_kwargs=None)
    assert "compilation_config" not in cpu  # eager on CPU: no graphs
    eager = engine_args(Path("/m"), CUDA_BUILD, max_model_len=4096, max_num_seqs=8, enforce_eager=True, dtype=None,
                        logits_processors=[], engine_kwargs=None)
    assert "compilation_config" not in eager


def test_switch_interval_is_checked_before_loading() -> None:
    done = greentrack("serve", "--switch-interval-ms", "0", "--port", "1")
    assert done.returncode == 2 and "--switch-interval-ms" in done.stderr
