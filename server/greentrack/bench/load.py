"""Team capacity: N simulated developers typing against a running ``greentrack serve``, swept over N.

Usage (any server, yours included; ``bench/load.py`` is the same entry point):

    python -m greentrack.bench.load --server http://127.0.0.1:8765 --levels 1,4,16 --duration 30 \
        [--tokens FILE | --mint-db SERVER.db] [--admin-token T] [--out load.json]

Place in the flow: each developer is a thread with its own token and its own file (a sample of Python's standard
library: ``bench.script``), re-typing it in real time with human timing (``script.keystroke_delay_s``: keystrokes
100–150 ms jittered, pauses at line ends and mid-line). As the editor does (``lsp/server.py``; docs/interfaces.md, "HTTP
API"): every keystroke supersedes the previous request — one still in its debounce is never sent, one in flight
is cancelled (``POST /v1/greentrack/cancel``, or ``--cancel disconnect``: the connection is closed); a request
that survives the debounce goes to the native endpoint ``POST /v1/greentrack/complete``; a suggestion that arrives
before the next keystroke is shown, and taken when the first-line oracle (``script.accepted_length``) says the
developer would type it (``POST /v1/greentrack/accept``). After each level the server's records are read
(``GET /v1/greentrack/completions/{id}?wait=``), ``/metrics`` is diffed (administrator token) and the GPUs are
probed (NVML: energy counter at the window's ends, utilization and power sampled; else ``nvidia-smi``); the
figures come from ``bench.load_stats``, among them where a slow answer's time goes (``breakdown``: the answer's
``greentrack`` times joined with the record's prefill, decode and tokens). Standard library only on the client
side (threads, ``http.client``), so it runs wherever the server's Python runs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from greentrack.bench.load_stats import (
    RequestLog,
    attach_records,
    breakdown_line,
    markdown_table,
    parse_prometheus,
    summarize_level,
)
from greentrack.bench.script import (
    BUDGETS,
    Segment,
    accepted_length,
    default_paths,
    keystroke_delay_s,
    line_budget_tokens,
)

#: Developers start typing spread over this long (s), so that N developers do not all press a key at once.
STAGGER_S = 2.0


@dataclass(frozen=True)
class Answer:
    """What one HTTP call returned. ``status`` 0: no answer (connection closed, by us when cancelling)."""

    status: int
    body: dict[str, Any]
    error: str = ""


class Client:
    """One developer's connection settings. Every call opens its own connection (a cancelled one closes it)."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "") or not parsed.hostname:
            raise ValueError(f"--server must be an http:// URL, not {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.base = parsed.path.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
             on_connection: Callable[[http.client.HTTPConnection], None] | None = None) -> Answer:
        body = json.dumps(payload).encode() if payload is not None else None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.connect()
            if on_connection is not None:
                on_connection(conn)
            conn.request(method, self.base + path, body=body, headers=self._headers(body))
            response = conn.getresponse()
            raw = response.read()
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                data = {"text": raw.decode("utf-8", "replace")}
            return Answer(response.status, data if isinstance(data, dict) else {"value": data})
        except (OSError, http.client.HTTPException) as e:
            return Answer(0, {}, f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    def text(self, path: str) -> str | None:
        """A text resource (``/metrics``); None unless 200."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", self.base + path, headers=self._headers(None))
            response = conn.getresponse()
            raw = response.read().decode("utf-8", "replace")
            return raw if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()


@dataclass
class LoadOptions:
    """One sweep's settings. Units: s, ms."""

    url: str
    tokens: list[str | None]
    admin_token: str | None = None
    debounce_ms: int = 150
    max_tokens: int | None = None
    budget: str = "fixed"  # or "line": each request's budget is the developer's next line (script.line_budget_tokens)
    cancel: str = "endpoint"  # or "disconnect"
    seed: int = 0
    files: list[Path] = field(default_factory=list)
    record_wait_s: float = 10.0
    settle_s: float = 2.0
    gpus: list[int] | None = None


class Developer:
    """One simulated developer: types its file in real time until ``stop_s``, requesting as the editor does."""

    def __init__(self, index: int, options: LoadOptions, segment_for: Callable[[int, int], Segment],
                 logs: list[RequestLog], logs_lock: threading.Lock, accepts: ThreadPoolExecutor) -> None:
        self.index = index
        self.options = options
        self.client = Client(options.url, options.tokens[index % len(options.tokens)])
        self.segment_for = segment_for
        self.seed = options.seed * 1009 + index
        self.logs, self.logs_lock, self.accepts = logs, logs_lock, accepts
        self.sent_ids: list[str] = []

    def run(self, start_s: float, stop_s: float) -> None:
        debounce_s = self.options.debounce_ms / 1000.0
        round_index = 0
        segment = self.segment_for(self.index, round_index)
        document_key = f"file:///load/dev{self.index}/{round_index}/{segment.name}"
        position = 0
        shown: tuple[RequestLog, str] | None = None
        t_s = start_s
        while t_s < stop_s:
            _sleep_until(t_s)
            key_s = t_s
            typed = segment.typed
            take = accepted_length(shown[1], typed[position:]) if shown is not None else 0
            if take and shown is not None:
                shown[0].accepted = True
                self.accepts.submit(self.client.call, "POST", "/v1/greentrack/accept",
                                    {"completion_id": shown[0].completion_id})
            position += max(1, take)
            shown = None
            if position >= len(typed):  # this file is done: the next one (a new document)
                round_index += 1
                segment = self.segment_for(self.index, round_index)
                document_key = f"file:///load/dev{self.index}/{round_index}/{segment.name}"
                typed, position = segment.typed, 1
            next_s = min(stop_s, key_s + keystroke_delay_s(segment, position, self.seed))
            log = RequestLog(self.index, uuid.uuid4().hex, key_s)
            with self.logs_lock:
                self.logs.append(log)
            send_s = key_s + debounce_s
            if send_s < next_s:
                _sleep_until(send_s)
                text = segment.before + typed[:position]
                budget = (line_budget_tokens(typed[position:] + segment.after, self.options.max_tokens or 64)
                          if self.options.budget == "line" else self.options.max_tokens)
                suggestion = self._request(log, document_key, text, next_s, budget)
                if log.answered and suggestion and log.done_s <= next_s:
                    log.shown = True
                    shown = (log, suggestion)
            t_s = next_s

    def _request(self, log: RequestLog, document_key: str, text: str, deadline_s: float,
                 max_tokens: int | None) -> str:
        """Send the request (``max_tokens`` None: the server's budget); cancel it at ``deadline_s`` (the next
        keystroke) if it has not been answered. Returns the suggestion's text ("" when cancelled or failed)."""
        payload: dict[str, Any] = {"text": text, "offset": len(text), "uri": document_key,
                                   "document_key": document_key, "language_id": "python",
                                   "completion_id": log.completion_id}
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        holder: dict[str, http.client.HTTPConnection] = {}
        finished = threading.Event()

        def cancel() -> None:
            if finished.is_set():
                return
            if self.options.cancel == "disconnect":
                conn = holder.get("conn")
                if conn is not None and conn.sock is not None:
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(2)
            else:
                self.client.call("POST", "/v1/greentrack/cancel", {"completion_id": log.completion_id})

        log.sent, log.sent_s = True, time.monotonic()
        self.sent_ids.append(log.completion_id)
        timer = threading.Timer(max(0.0, deadline_s - log.sent_s), cancel)
        timer.daemon = True
        timer.start()
        try:
            answer = self.client.call("POST", "/v1/greentrack/complete", payload,
                                      on_connection=lambda c: holder.__setitem__("conn", c))
        finally:
            finished.set()
            timer.cancel()
        log.done_s = time.monotonic()
        suggestion = ""
        if answer.status == 200:
            log.cancelled = bool(answer.body.get("cancelled"))
            log.answered = not log.cancelled
            suggestion = str(answer.body.get("text") or "") if log.answered else ""
            log.text_chars = len(suggestion)
            log.take_answer(answer.body.get("greentrack"))
        elif answer.status == 0 and (log.done_s >= deadline_s - 0.01 or self.options.cancel == "disconnect"):
            log.cancelled = True  # we closed it
        else:
            log.error = f"HTTP {answer.status}" if answer.status else answer.error.split(":")[0]
        return suggestion


def _sleep_until(t_s: float) -> None:
    delay = t_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class GpuProbe:
    """The GPUs during a level: NVML's energy counter at both ends, utilization and power sampled every
    ``period_s`` (``nvidia-smi`` when NVML's Python bindings are missing: no energy then). Nothing when no GPU."""

    def __init__(self, gpus: Sequence[int] | None = None, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.source = "none"
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._util: list[float] = []
        self._power: list[float] = []
        self._energy0: float | None = None
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            ids = list(gpus) if gpus else list(range(count))
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids]
            self._nvml = pynvml
            self.source = "nvml"
        except Exception:
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
        self.gpus = list(gpus) if gpus else None

    def _energy_j(self) -> float | None:
        if self._nvml is None:
            return None
        try:
            return math.fsum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0
        except Exception:
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                if self._nvml is not None:
                    utils = [float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles]
                    power = math.fsum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1000.0
                else:
                    query = ["nvidia-smi", "--query-gpu=index,utilization.gpu,power.draw",
                             "--format=csv,noheader,nounits"]
                    out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
                    rows = [[x.strip() for x in line.split(",")] for line in out.strip().splitlines()]
                    rows = [r for r in rows if not self.gpus or int(r[0]) in self.gpus]
                    utils = [float(r[1]) for r in rows]
                    power = math.fsum(float(r[2]) for r in rows)
            except Exception:
                continue
            if utils:
                self._util.append(sum(utils) / len(utils))
                self._power.append(power)

    def start(self) -> None:
        self._util.clear()
        self._power.clear()
        self._energy0 = self._energy_j()
        if self.source != "none":
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="gpu-probe", daemon=True)
            self._thread.start()

    def stop(self) -> dict[str, Any] | None:
        if self.source == "none":
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        energy1 = self._energy_j()
        return {
            "source": self.source,
            "energy_j": (energy1 - self._energy0) if energy1 is not None and self._energy0 is not None else None,
            "utilization_mean_pct": sum(self._util) / len(self._util) if self._util else None,
            "power_mean_w": sum(self._power) / len(self._power) if self._power else None,
            "samples": len(self._util),
        }


class LoadRun:
    """Runs levels one after the other against one server."""

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.files = options.files or default_paths(16, options.seed)
        self.admin = Client(options.url, options.admin_token or options.tokens[0])
        self.probe = GpuProbe(options.gpus)
        self._segments: dict[tuple[int, int], Segment] = {}

    def segment_for(self, developer: int, round_index: int) -> Segment:
        key = (developer, round_index)
        if key not in self._segments:
            path = self.files[(developer + round_index) % len(self.files)]
            self._segments[key] = Segment.from_file(path, 4000, self.options.seed * 7919 + developer * 31 + round_index)
        return self._segments[key]

    def metrics(self) -> dict[str, float] | None:
        text = self.admin.text("/metrics")
        return parse_prometheus(text) if text is not None else None

    def level(self, developers: int, duration_s: float) -> dict[str, Any]:
        if developers > len(self.options.tokens) and any(self.options.tokens):
            raise ValueError(f"{developers} developers need {developers} tokens, {len(self.options.tokens)} given")
        logs: list[RequestLog] = []
        lock = threading.Lock()
        accepts = ThreadPoolExecutor(max_workers=4, thread_name_prefix="load-accept")
        devs = [Developer(i, self.options, self.segment_for, logs, lock, accepts) for i in range(developers)]
        metrics_before = self.metrics()
        metrics_before_s = time.monotonic()
        self.probe.start()
        start_s = time.monotonic() + 0.2
        stop_s = start_s + duration_s
        threads = []
        for i, dev in enumerate(devs):
            offset = STAGGER_S * i / max(1, developers)
            thread = threading.Thread(target=dev.run, args=(start_s + offset, stop_s), name=f"dev{i}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout=duration_s + 120)
        window_s = max(duration_s, time.monotonic() - start_s)
        gpu = self.probe.stop()
        accepts.shutdown(wait=True)
        records = self.records(devs)
        attach_records(logs, records)  # each request's prefill, decode and tokens beside what its answer said
        time.sleep(self.options.settle_s)  # the idle meter's last period
        metrics_after = self.metrics()
        summary = summarize_level(developers, window_s, logs, records, metrics_before=metrics_before,
                                  metrics_after=metrics_after, gpu=gpu,
                                  metrics_span_s=time.monotonic() - metrics_before_s)
        summary["gpu_probe"] = gpu
        return summary

    def records(self, devs: Sequence[Developer]) -> list[dict[str, Any]]:
        """Every sent request's record (404 — cancelled before it reached the model — gives none)."""
        wait = self.options.record_wait_s

        def fetch(dev: Developer, cid: str) -> dict[str, Any] | None:
            answer = dev.client.call("GET", f"/v1/greentrack/completions/{cid}?wait={wait:g}")
            return {"completion_id": cid, **answer.body} if answer.status == 200 else None

        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="load-records") as pool:
            futures = [pool.submit(fetch, dev, cid) for dev in devs for cid in dev.sent_ids]
            rows = [f.result() for f in futures]
        return [r for r in rows if r is not None]


def parse_levels(text: str, default_duration_s: float) -> list[tuple[int, float]]:
    """``"1:60,4,16:60"`` → [(1, 60.0), (4, default), (16, 60.0)]."""
    levels: list[tuple[int, float]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        n_text, _, d_text = part.partition(":")
        n = int(n_text)
        d = float(d_text) if d_text else default_duration_s
        if n < 1 or d <= 0:
            raise ValueError(f"bad level {part!r}: developers ≥ 1, duration > 0")
        levels.append((n, d))
    if not levels:
        raise ValueError("no levels")
    return levels


def read_tokens(path: Path) -> list[str | None]:
    """One token per line (blank lines and ``#`` comments skipped; ``developer<TAB>token`` also accepted)."""
    out: list[str | None] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split()[-1])
    return out


def mint_tokens(db: Path, developers: int, prefix: str = "load") -> tuple[list[str | None], str]:
    """Issue ``developers`` tokens and one administrator token in ``db`` (the server's database)."""
    from greentrack.store import Store

    with Store(db) as store:
        tokens: list[str | None] = [store.add_token(f"{prefix}{i:03d}@bench.local") for i in range(developers)]
        admin = store.add_token(f"{prefix}-admin@bench.local", admin=True)
    return tokens, admin


def machine_meta(argv: Sequence[str]) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "command": " ".join(["python -m greentrack.bench.load", *argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="greentrack-bench-load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="URL of a running greentrack serve")
    parser.add_argument("--levels", default="1,4,16,64,128",
                        help="developers per level: N or N:SECONDS, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level (default 30)")
    parser.add_argument("--tokens", type=Path, help="file with one bearer token per developer")
    parser.add_argument("--mint-db", type=Path, help="issue the developers' and an admin token in this server database")
    parser.add_argument("--admin-token", default=os.environ.get("GREENTRACK_ADMIN_TOKEN"),
                        help="token of an administrator, to read /metrics (default $GREENTRACK_ADMIN_TOKEN)")
    parser.add_argument("--debounce-ms", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, help="token budget (default: the server's; with --budget line, "
                        "the cap, default 64)")
    parser.add_argument("--budget", choices=BUDGETS, default="fixed",
                        help="line: each request's budget is the developer's next line, for models that never stop "
                        "at a line end (random weights; script.line_budget_tokens)")
    parser.add_argument("--cancel", choices=("endpoint", "disconnect"), default="endpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=Path, nargs="*", help="files to re-type (default: 16 stdlib modules)")
    parser.add_argument("--gpus", help="GPU indices to probe (default: all)")
    parser.add_argument("--record-wait", type=float, default=10.0, help="long-poll per record, s")
    parser.add_argument("--out", type=Path, help="write the JSON here (after every level)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args(argv)
    levels = parse_levels(args.levels, args.duration)
    most = max(n for n, _ in levels)
    tokens: list[str | None] = [None]
    admin = args.admin_token
    if args.tokens is not None:
        tokens = read_tokens(args.tokens)
    elif args.mint_db is not None:
        tokens, minted_admin = mint_tokens(args.mint_db, most)
        admin = admin or minted_admin
    options = LoadOptions(url=args.server, tokens=tokens, admin_token=admin, debounce_ms=args.debounce_ms,
                          max_tokens=args.max_tokens, budget=args.budget, cancel=args.cancel, seed=args.seed,
                          files=list(args.files or []),
                          record_wait_s=args.record_wait,
                          gpus=[int(g) for g in args.gpus.split(",")] if args.gpus else None)
    run = LoadRun(options)
    result: dict[str, Any] = {"meta": machine_meta(list(argv) if argv is not None else sys.argv[1:]),
                              "settings": {"debounce_ms": args.debounce_ms, "cancel": args.cancel, "seed": args.seed,
                                           "max_tokens": args.max_tokens, "budget": args.budget,
                                           "gpu_probe": run.probe.source,
                                           "files": [str(p) for p in run.files]},
                              "levels": []}
    for n, duration_s in levels:
        print(f"load: {n} developer(s) for {duration_s:g} s …", file=sys.stderr, flush=True)
        level = run.level(n, duration_s)
        result["levels"].append(level)
        print(f"load: N={n}: p50 {level['latency_p50_ms']} ms, p95 {level['latency_p95_ms']} ms, "
              f"{level['completions_per_s']} completions/s, {level['j_per_completion']} J/completion, "
              f"errors {level['errors']}", file=sys.stderr, flush=True)
        print(f"load: N={n}: {breakdown_line(level)}", file=sys.stderr, flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    result["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2) if args.json else markdown_table(result["levels"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
