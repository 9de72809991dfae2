"""Benchmark: the embedded CPU engine against llama.cpp on the same GGUF, one thread, interleaved (issue 15).

Three engines, each in its own worker process (so each one's peak RSS is its own), fed the same token ids
(real code from the standard library, tokenized by the model's tokenizer; llama.cpp reads the same vocabulary
from the same GGUF):

- ``int4``: greentrack's CPU engine (``engine/cpu_decode.py``, the default for the embedded model);
- ``int4-resident`` (not run by default): the same engine with its dense bf16 prefill weights copied into
  resident memory, as before they were mapped from a file (``quantize.DenseFile``): the prefill's side-by-side
  reference for that change;
- ``bf16``: greentrack's transformers model as before issue 15 (``GREENTRACK_CPU_ENGINE=transformers``);
- ``llamacpp``: llama-cpp-python, from its own virtual environment (``--llamacpp-python``; never the product's).

Rounds alternate the engines (the order rotates each round); each round measures a prefill of 512 tokens and
greedy decode at 512 and 1024 tokens of context. Figures are process CPU time (what energy follows on a shared
machine) and wall time, medians over rounds. Then, unless ``--quality 0``, the quality gate: the first line of
the int4 engine's greedy suggestion against the bf16 model's at ``--quality`` points of the standard library.

    .venv/bin/python bench/cpu_engine.py --rounds 5 --quality 200 --out bench/results/cpu_engine.json

The worker mode (``--worker NAME``) speaks JSON lines on stdin/stdout; the llama.cpp worker imports only
``llama_cpp`` and the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENGINES = ("int4", "bf16", "llamacpp")
WORKER_ENGINES = (*ENGINES, "int4-resident")
DEFAULT_LLAMACPP_PYTHON = "/work/venv-llamacpp/bin/python"


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB. The peak is ``VmHWM``, this process's own high-water
    mark: ``ru_maxrss`` of a process spawned through ``vfork`` starts at its parent's peak."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    current = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return current, peak


# ---------------------------------------------------------------------------------------------- workers


class GreentrackWorker:
    """The backend's runner, driven directly: prefill = ``runner.prefill``, a decode step = ``runner.step``."""

    def __init__(self, engine: str) -> None:
        if engine == "bf16":
            os.environ["GREENTRACK_CPU_ENGINE"] = "transformers"
        os.environ.setdefault("GREENTRACK_THREADS", "1")
        import torch

        from greentrack.engine.transformers_backend import TransformersBackend

        self.torch = torch
        self.backend = TransformersBackend(warmup=True)
        if engine == "int4-resident":
            self._resident_dense()

    def _resident_dense(self) -> None:
        """The dense prefill weights copied out of their file mapping into resident memory (before DenseFile)."""
        for layer in self.backend.model.weights.layers:
            if layer.dense_pages is None:
                continue
            for linear in (layer.qkv, layer.out, layer.gate_up, layer.down):
                if linear.dense is not None:
                    linear.dense = linear.dense.clone()
            layer.dense_pages.release()
            layer.dense_pages = None
        from greentrack.engine.loading import release_free_memory

        release_free_memory()

    def run(self, ids: list[int], steps: int) -> list[float]:
        """Prefill ``ids``, then ``steps`` greedy steps; returns [prefill cpu, prefill wall, decode cpu, wall]."""
        torch, runner = self.torch, self.backend.runner
        with torch.inference_mode():
            runner.begin(None, ids)
            c0, w0 = time.process_time(), time.perf_counter()
            token = int(torch.argmax(runner.prefill(ids)))
            c1, w1 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                token = int(torch.argmax(runner.step(token)))
            c2, w2 = time.process_time(), time.perf_counter()
            runner.end(None, [])
        return [c1 - c0, w1 - w0, c2 - c1, w2 - w1]


class LlamaCppWorker:
    def __init__(self, gguf: str) -> None:
        import llama_cpp  # type: ignore[import-not-found]  # its own venv, never the product's

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=1,
                                   n_threads_batch=1, verbose=False)
        self.n_vocab = int(self.llm.n_vocab())
        self.run(list(range(100, 164)), 4)  # warm-up, as the greentrack workers warm up at load

    def _argmax(self) -> int:
        """The greedy next token from the context's last logits (``eval`` leaves them there, uncopied)."""
        import numpy as np

        pointer = self.llm._ctx.get_logits_ith(-1)
        return int(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).argmax())

    def run(self, ids: list[int], steps: int) -> list[float]:
        llm = self.llm
        llm.reset()
        c0, w0 = time.process_time(), time.perf_counter()
        llm.eval(ids)
        token = self._argmax()
        c1, w1 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            llm.eval([token])
            token = self._argmax()
        c2, w2 = time.process_time(), time.perf_counter()
        return [c1 - c0, w1 - w0, c2 - c1, w2 - w1]


def worker_main(engine: str, gguf: str) -> None:
    t0 = time.perf_counter()
    worker: Any = LlamaCppWorker(gguf) if engine == "llamacpp" else GreentrackWorker(engine)
    load_s = time.perf_counter() - t0
    current, peak = rss_mib()
    version = ""
    if engine == "llamacpp":
        version = str(getattr(worker.llama_cpp, "__version__", ""))
    print(json.dumps({"ready": True, "load_s": load_s, "rss_mib": current, "peak_rss_mib": peak,
                      "version": version}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        figures = worker.run(msg["ids"], msg["steps"])
        current, peak = rss_mib()
        print(json.dumps({"figures": figures, "rss_mib": current, "peak_rss_mib": peak}), flush=True)


# ---------------------------------------------------------------------------------------------- driver


class Worker:
    def __init__(self, engine: str, python: str, gguf: str) -> None:
        env = dict(os.environ, GREENTRACK_THREADS="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        self.engine = engine
        self.proc = subprocess.Popen(
            [python, __file__, "--worker", engine, "--gguf", gguf], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.engine} exited (rc {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(self, ids: list[int], steps: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "run", "ids": ids, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def token_ids(count: int) -> list[int]:
    """``count`` token ids of real code: standard-library modules, tokenized by the embedded model's tokenizer."""
    import sysconfig

    import transformers

    from greentrack.engine.loading import materialize_hf_folder, resolve_model
    from greentrack.engine.quality import STDLIB_MODULES

    folder = materialize_hf_folder(resolve_model("embedded"))
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(folder))
    text = "".join(Path(sysconfig.get_paths()["stdlib"], name).read_text() for name in STDLIB_MODULES[:3])
    ids: list[int] = tokenizer(text)["input_ids"]
    return ids[:count]


def quality_gate(points: int, context_tokens: int, max_tokens: int) -> dict[str, Any]:
    """First-line agreement of the int4 engine with the bf16 transformers model (the issue's reference) and with
    the float32 one (the GGUF's exact values, the model as trained and quantized), and of bf16 with float32."""
    from greentrack.engine.loading import load_cpu_model, load_model, resolve_model
    from greentrack.engine.quality import first_line, first_line_agreement, stdlib_points, suggestions
    from greentrack.engine.transformers_backend import TransformersBackend

    os.environ.setdefault("GREENTRACK_THREADS", "1")
    chosen = stdlib_points(points)
    source = resolve_model("embedded")
    texts: dict[str, list[str]] = {}
    for name in ("bf16", "fp32", "int4"):
        loaded = load_cpu_model(source) if name == "int4" else load_model(
            source, "cpu", "bfloat16" if name == "bf16" else "float32")
        backend = TransformersBackend(loaded=loaded)
        started = time.perf_counter()
        texts[name] = suggestions(backend, chosen, max_tokens, context_tokens)
        print(f"quality: {name} suggestions at {len(chosen)} points in {time.perf_counter() - started:.0f} s",
              flush=True)
        del backend, loaded
    differ = [{"point": p.name, **{k: first_line(v[i]) for k, v in texts.items()}}
              for i, p in enumerate(chosen) if len({first_line(v[i]) for v in texts.values()}) > 1]
    return {
        "points": len(chosen), "context_tokens": context_tokens, "max_tokens": max_tokens,
        "int4_vs_bf16": first_line_agreement(texts["bf16"], texts["int4"]),
        "int4_vs_fp32": first_line_agreement(texts["fp32"], texts["int4"]),
        "bf16_vs_fp32": first_line_agreement(texts["fp32"], texts["bf16"]),
        "differ": differ,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=WORKER_ENGINES)
    parser.add_argument("--gguf", default="")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"any of {', '.join(WORKER_ENGINES)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32, help="decode steps per measurement")
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--contexts", default="512,1024")
    parser.add_argument("--quality", type=int, default=200, help="points of the quality gate (0: skip it)")
    parser.add_argument("--llamacpp-python", default=DEFAULT_LLAMACPP_PYTHON)
    parser.add_argument("--out", default="")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args.worker, args.gguf)
        return

    from greentrack.engine.loading import resolve_model

    gguf = str(resolve_model("embedded").path)
    contexts = [int(c) for c in args.contexts.split(",")]
    engines = [e for e in args.engines.split(",") if e]
    ids = token_ids(max([*contexts, args.prefill])) if engines else []
    rounds = args.rounds if engines else 0  # --engines "": the quality gate alone
    load_before = os.getloadavg()
    workers = start_workers(engines, args.llamacpp_python, gguf)
    samples = measure_rounds(workers, engines, ids, rounds, args, contexts)
    final = close_workers(workers, ids[:16])
    load_after = os.getloadavg()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "steps": args.steps,
        "prefill_tokens": args.prefill, "contexts": contexts, "load_average_before": load_before,
        "load_average_after": load_after, "engines": {},
    }
    print(f"\nmedians over {args.rounds} interleaved rounds, 1 thread; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1-min)")
    report_engines(result, engines, workers, samples, final, args.prefill, contexts)
    if "int4" in engines and "llamacpp" in engines:
        report_llamacpp_ratios(result, contexts)
    if args.quality > 0:
        report_quality(result, args.quality)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def start_workers(engines: list[str], llamacpp_python: str, gguf: str) -> dict[str, Worker]:
    """One worker process per engine, started one at a time: a loading worker does not slow another's
    measurements."""
    workers = {}
    for engine in engines:
        python = llamacpp_python if engine == "llamacpp" else sys.executable
        workers[engine] = Worker(engine, python, gguf)
        print(f"{engine}: loaded in {workers[engine].ready['load_s']:.1f} s, peak RSS "
              f"{workers[engine].ready['peak_rss_mib']:.0f} MiB", flush=True)
    return workers


def measure_rounds(
    workers: dict[str, Worker], engines: list[str], ids: list[int], rounds: int, args: argparse.Namespace,
    contexts: list[int],
) -> dict[str, dict[str, list[float]]]:
    """``rounds`` interleaved rounds (the engines' order rotates each round): engine → figure → its samples."""
    samples: dict[str, dict[str, list[float]]] = {e: {} for e in engines}
    for r in range(rounds):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for engine in order:
            measure_once(workers[engine], samples[engine], ids, args.prefill, contexts, args.steps)
        print(f"round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    return samples


def measure_once(
    w: Worker, samples: dict[str, list[float]], ids: list[int], prefill_tokens: int, contexts: list[int], steps: int
) -> None:
    """One engine's share of a round: a prefill, then ``steps`` decode steps at each context length."""
    prefill = w.run(ids[:prefill_tokens], 0)["figures"]
    samples.setdefault("prefill_cpu_s", []).append(prefill[0])
    samples.setdefault("prefill_wall_s", []).append(prefill[1])
    for ctx in contexts:
        fig = w.run(ids[:ctx], steps)["figures"]
        samples.setdefault(f"decode{ctx}_cpu_ms", []).append(fig[2] / steps * 1e3)
        samples.setdefault(f"decode{ctx}_wall_ms", []).append(fig[3] / steps * 1e3)


def close_workers(workers: dict[str, Worker], probe_ids: list[int]) -> dict[str, float]:
    """Each worker's peak RSS at the end (after one more run: ``probe_ids``, one step), then the worker closed:
    engine → MiB."""
    final = {}
    for engine, w in workers.items():
        reply = w.run(probe_ids, 1)
        final[engine] = reply["peak_rss_mib"]
        w.close()
    return final


def report_engines(
    result: dict[str, Any], engines: list[str], workers: dict[str, Worker], samples: dict[str, dict[str, list[float]]],
    final: dict[str, float], prefill_tokens: int, contexts: list[int],
) -> None:
    """Each engine's medians and samples into ``result["engines"]``, and the table of them printed."""
    header = ["engine", f"prefill {prefill_tokens} CPU s"] + [f"decode@{c} CPU ms/tok" for c in contexts] + [
        "peak RSS after load MiB", "peak RSS at end MiB"]
    print(" | ".join(header))
    for engine in engines:
        med = {k: statistics.median(v) for k, v in samples[engine].items()}
        result["engines"][engine] = {"medians": med, "samples": samples[engine],
                                     "load_s": workers[engine].ready["load_s"],
                                     "peak_rss_after_load_mib": workers[engine].ready["peak_rss_mib"],
                                     "peak_rss_end_mib": final[engine],
                                     "version": workers[engine].ready.get("version", "")}
        row = [engine, f"{med['prefill_cpu_s']:.3f}"] + [f"{med[f'decode{c}_cpu_ms']:.2f}" for c in contexts] + [
            f"{workers[engine].ready['peak_rss_mib']:.0f}", f"{final[engine]:.0f}"]
        print(" | ".join(row))


def report_llamacpp_ratios(result: dict[str, Any], contexts: list[int]) -> None:
    """The int4 engine's decode CPU time per token over llama.cpp's at each context, into ``result`` and printed."""
    for c in contexts:
        mine = result["engines"]["int4"]["medians"][f"decode{c}_cpu_ms"]
        ref = result["engines"]["llamacpp"]["medians"][f"decode{c}_cpu_ms"]
        result[f"decode{c}_ratio_to_llamacpp"] = mine / ref
        print(f"decode at {c}: int4 / llama.cpp = {mine / ref:.2f}x (goal <= 1.5x)")


def report_quality(result: dict[str, Any], points: int) -> None:
    """The quality gate at ``points`` stdlib points into ``result["quality"]``, and its figures printed."""
    gate = quality_gate(points, 512, 32)
    result["quality"] = gate
    print(f"quality gate at {gate['points']} stdlib points, first line of the greedy suggestion equal: "
          f"int4 vs bf16 {gate['int4_vs_bf16'] * 100:.1f} % (goal >= 95 %), int4 vs fp32 "
          f"{gate['int4_vs_fp32'] * 100:.1f} %, bf16 vs fp32 {gate['bf16_vs_fp32'] * 100:.1f} %")


if __name__ == "__main__":
    main()
