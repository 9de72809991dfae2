"""GPU decode at batch 1: plain Hugging Face ``generate`` vs greentrack's static cache + CUDA-graph decode step.

Run on the GPU machine (no hub access there, so the model is the Qwen2.5-Coder-1.5B *shape* built from a config
in code, random weights, bf16):

    PYTHONPATH=server python bench/gpu_decode.py [--out DIR]

Measures, side by side in one run: ms/token (wall clock, after a synchronize) and J/token from NVML's
cumulative energy counter (``nvmlDeviceGetTotalEnergyConsumption``, whole GPU, ~100 ms update period) read
only at the ends of long windows (>= ~8 s each, so the counter's resolution is < 1%), plus idle power.
Figures are *measured* (counter windows), gross (idle power included); J/token above idle is also given.
Also checks that the greedy tokens of the graph path match ``generate`` and eager static decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from typing import Any

import torch

from greentrack.engine.loading import LoadedModel, ModelSource
from greentrack.engine.transformers_backend import TransformersBackend
from greentrack.engine.types import CompletionRequest

PROMPT_TOKENS = 128
NEW_TOKENS = 256
WINDOW_S = 8.0


def build_model() -> Any:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        max_position_embeddings=32768, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def build_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens, Qwen's FIM and end tokens), enough to drive the engine."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.add_special_tokens({"eos_token": "<|endoftext|>",
                            "additional_special_tokens": ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]})
    return tok


class Nvml:
    def __init__(self) -> None:
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        self.name = pynvml.nvmlDeviceGetName(self.handle)
        self.driver = pynvml.nvmlSystemGetDriverVersion()

    def energy_j(self) -> float:
        return float(self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle)) / 1000.0


def window(nvml: Nvml, fn: Any, tokens_per_call: int, min_s: float = WINDOW_S) -> dict[str, Any]:
    """Call ``fn`` repeatedly for at least ``min_s`` seconds between two counter reads."""
    torch.cuda.synchronize()
    e0, t0 = nvml.energy_j(), time.monotonic()
    calls = 0
    while True:
        fn()
        calls += 1
        torch.cuda.synchronize()
        if time.monotonic() - t0 >= min_s:
            break
    t1, e1 = time.monotonic(), nvml.energy_j()
    tokens = calls * tokens_per_call
    return {"calls": calls, "tokens": tokens, "duration_s": t1 - t0, "energy_j": e1 - e0,
            "ms_per_token": (t1 - t0) * 1e3 / tokens, "j_per_token": (e1 - e0) / tokens,
            "power_w": (e1 - e0) / (t1 - t0)}


#: The greentrack decode paths measured: (label, CUDA graph, compiled step).
VARIANTS = (("greentrack_static_eager", False, False), ("greentrack_static_cudagraph", True, False),
            ("greentrack_cudagraph_compiled", True, True))


def main() -> None:
    """Steps: the machine and the model; idle power; HF ``generate``; each greentrack path (``_GreentrackPaths``);
    J/token above idle; the JSON file and a table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--window-s", type=float, default=WINDOW_S)
    args = ap.parse_args()
    nvml = Nvml()
    res = _environment(nvml)
    t = time.monotonic()
    model = build_model()
    tok = build_tokenizer()
    res["build_s"] = time.monotonic() - t
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1000, 100000, (1, PROMPT_TOKENS), generator=g).cuda()
    res["idle"] = _idle_window(nvml)
    idle_w = res["idle"]["power_w"]
    results: dict[str, Any] = {}
    ref_tokens = _hf_generate(nvml, model, prompt, args.window_s, results)
    paths = _GreentrackPaths(nvml, model, tok, prompt, ref_tokens, args.window_s)
    for label, graph, compiled in VARIANTS:
        results[label] = paths.measure(graph, compiled)
    _add_above_idle(results, idle_w)
    res["results"] = results
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_decode.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)
    print(json.dumps(res, indent=2, default=str))
    _print_table(results, idle_w)
    sys.stdout.flush()


def _environment(nvml: Nvml) -> dict[str, Any]:
    """The run's header: GPU, driver, library versions, sizes, date."""
    res: dict[str, Any] = {"gpu": nvml.name, "driver": nvml.driver, "torch": torch.__version__,
                           "python": platform.python_version(), "prompt_tokens": PROMPT_TOKENS,
                           "new_tokens": NEW_TOKENS, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    import transformers

    res["transformers"] = transformers.__version__
    return res


def _idle_window(nvml: Nvml) -> dict[str, Any]:
    """The GPU's idle power: a counter window over sleeps, after a second of rest."""
    torch.cuda.synchronize()
    time.sleep(1.0)
    return window(nvml, lambda: time.sleep(0.5), 1, min_s=4.0)


def _hf_generate(nvml: Nvml, model: Any, prompt: torch.Tensor, window_s: float, results: dict[str, Any]) -> list[int]:
    """Plain ``generate`` (greedy): its window goes to ``results``; returns its first 64 tokens, the reference."""

    def gen(n: int) -> torch.Tensor:
        out: torch.Tensor = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                           min_new_tokens=n, do_sample=False)
        return out[0, PROMPT_TOKENS:]

    ref_tokens: list[int] = []
    try:
        with torch.inference_mode():
            ref_tokens = gen(64).tolist()
            gen(NEW_TOKENS)
            results["hf_generate"] = window(nvml, lambda: gen(NEW_TOKENS), NEW_TOKENS, window_s)
    except Exception:
        results["hf_generate"] = {"error": traceback.format_exc(limit=3)}
    return ref_tokens


def _matching_prefix(mine: list[int], reference: list[int]) -> int:
    """How many leading tokens of ``mine`` match ``reference``."""
    return next((i for i, (a, b) in enumerate(zip(mine, reference, strict=False)) if a != b), len(mine))


class _GreentrackPaths:
    """The greentrack backend on the same model and prompt, one decode path at a time (``measure``)."""

    def __init__(
        self, nvml: Nvml, model: Any, tok: Any, prompt: torch.Tensor, ref_tokens: list[int], window_s: float
    ) -> None:
        self.nvml, self.prompt, self.ref_tokens, self.window_s = nvml, prompt, ref_tokens, window_s
        self.loaded = LoadedModel(
            model, tok, ModelSource("qwen2.5-coder-1.5b-shape", "folder", __import__("pathlib").Path(".")),
            __import__("pathlib").Path("."), torch.device("cuda:0"), torch.bfloat16,
        )
        with torch.inference_mode():
            self.ref_logits = model(prompt).logits[0, -1].float()
        #: The first path's greedy tokens (the static eager one, unless it failed before them).
        self.eager_tokens: list[int] = []

    def measure(self, graph: bool, compiled: bool) -> dict[str, Any]:
        """One path: greedy agreement, a counter window, span timings and one real completion; or its error."""
        try:
            t = time.monotonic()
            backend = TransformersBackend("qwen2.5-coder-1.5b-shape", "cuda", loaded=self.loaded, cuda_graph=graph,
                                          compile_step=compiled, context_tokens=1024, max_tokens=NEW_TOKENS)
            init_s = time.monotonic() - t
            mine, logits_check = self._greedy_tokens(backend)
            match = _matching_prefix(mine, self.ref_tokens)
            if not self.eager_tokens:
                self.eager_tokens = mine
            match_eager = _matching_prefix(mine, self.eager_tokens)
            spans = backend.run_synthetic(PROMPT_TOKENS, NEW_TOKENS)
            w = window(self.nvml, lambda b=backend: b.run_synthetic(PROMPT_TOKENS, NEW_TOKENS), NEW_TOKENS,
                       self.window_s)
            sp = [backend.run_synthetic(PROMPT_TOKENS, NEW_TOKENS) for _ in range(3)]
            decode_ms = min(s[1].duration_s for s in sp) * 1e3 / NEW_TOKENS
            pre = [backend.run_synthetic(1024, 0)[0].duration_s * 1e3 for _ in range(5)]
            w.update(init_s=init_s, uses_graph=backend.runner.uses_graph,
                     graph_error=getattr(backend.runner, "graph_error", ""),
                     greedy_match_vs_generate=f"{match}/64", greedy_match_vs_static_eager=f"{match_eager}/64",
                     first_logits=logits_check, decode_span_ms_per_token=decode_ms,
                     prefill_1024_ms=sorted(pre)[2], first_spans=[(s.kind, s.duration_s, s.work) for s in spans])
            w["complete"] = _one_completion(backend)
            backend.close()
            del backend
            torch.cuda.empty_cache()
            return w
        except Exception:
            return {"error": traceback.format_exc(limit=5)}

    def _greedy_tokens(self, backend: Any) -> tuple[list[int], dict[str, Any]]:
        """64 greedy tokens through the runner (same prompt ids, no reuse), and its first logits vs a plain forward."""
        ids = self.prompt[0].tolist()
        ref_logits = self.ref_logits
        with torch.inference_mode():
            backend.runner.begin(None, ids)
            first_logits = backend.runner.prefill(ids).float()
            top2 = torch.topk(ref_logits, 2).values
            logits_check = {"max_abs_diff_vs_plain_forward": float((first_logits - ref_logits).abs().max()),
                            "ref_top2_margin": float(top2[0] - top2[1]),
                            "argmax_equal": bool(int(first_logits.argmax()) == int(ref_logits.argmax()))}
            token = int(torch.argmax(first_logits))
            mine = [token]
            for _ in range(63):
                token = int(torch.argmax(backend.runner.step(token)))
                mine.append(token)
            backend.runner.end(None, [])
        return mine, logits_check


def _one_completion(backend: Any) -> dict[str, Any]:
    """One real completion through the whole path (FIM prompt, stop rules), then one that reuses its prompt."""
    text = "def fib(n):\n    " + "x = 1\n    " * 50
    r = backend.complete(CompletionRequest("r1", "doc", text, len(text), max_tokens=32, max_time_s=5))
    r2 = backend.complete(CompletionRequest("r2", "doc", text + "y", len(text) + 1, max_tokens=32, max_time_s=5))
    return {"prompt_tokens": r.prompt_tokens, "reused": r2.reused_prompt_tokens,
            "completion_tokens": r.completion_tokens, "fim": r.extras.get("fim"),
            "prefill_ms": r.extras.get("prefill_ms"), "decode_ms": r.extras.get("decode_ms"),
            "prefill_ms_reused": r2.extras.get("prefill_ms"), "stop": r.stop_reason}


def _add_above_idle(results: dict[str, Any], idle_w: float) -> None:
    """J/token less the idle power over each measured window."""
    for v in results.values():
        if "j_per_token" in v:
            v["j_per_token_above_idle"] = (v["energy_j"] - idle_w * v["duration_s"]) / v["tokens"]


def _print_table(results: dict[str, Any], idle_w: float) -> None:
    """One Markdown row per path."""
    print(f"\n| path | ms/token | J/token | J/token above idle | W | tokens |  (idle {idle_w:.0f} W)")
    for k, v in results.items():
        if "j_per_token" in v:
            print(f"| {k} | {v['ms_per_token']:.2f} | {v['j_per_token']:.3f} | {v['j_per_token_above_idle']:.3f} | "
                  f"{v['power_w']:.0f} | {v['tokens']} |")
        else:
            print(f"| {k} | error | | | | |")


if __name__ == "__main__":
    main()
