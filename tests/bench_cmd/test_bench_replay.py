"""The suggestion cache in the real pipeline, and ``greentrack bench`` replaying real typing (embedded model, CPU).

A short replay (seconds): the oracle accepts a planted suggestion and rejects a wrong one; cache hits cost 0 J and are
logged (accept and cancel work on them); the naive configuration really disables each optimization; the JSON has
every figure; the HTML renders in headless Chromium (skipped only where none is installed).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greentrack.bench.command import open_pipeline_targets
from greentrack.bench.replay import Config, ConfigRun, PipelineTarget, replay
from greentrack.bench.script import Segment
from greentrack.config import Settings
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.pipeline import RequestContext

SOURCE = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y\n\n" for i in range(12))
CACHE_ONLY = Config("cache", 0, reuse=False, stop_rules=False, cache=True)
ALL = Config("all", 150, reuse=True, stop_rules=True, cache=True)


def settings_for(db: Path) -> Settings:
    return Settings.from_env(db_path=db).updated(max_tokens=12, context_tokens=192)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PipelineTarget]]:
    db = tmp_path_factory.mktemp("bench") / "bench.db"
    opened = open_pipeline_targets(settings_for(db), [CACHE_ONLY, ALL], db)
    yield {t.developer.removeprefix("bench:"): t for t in opened}
    for t in opened:
        t.close()


def stored(target: PipelineTarget, completion_id: str) -> dict[str, Any]:
    store = target.pipeline.store
    assert store is not None
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM completions WHERE completion_id = ?", (completion_id,)).fetchone()
    assert row is not None, f"{completion_id} not stored"
    return dict(row)


def test_a_cache_hit_costs_0_J_is_logged_and_can_be_accepted_or_cancelled(targets: dict[str, PipelineTarget]) -> None:
    pipeline = targets["all"].pipeline
    text = "def add(a, b):\n    return"
    request = CompletionRequest("engine-1", "doc", text, len(text), max_tokens=12, max_time_s=30)
    first = pipeline.run(request, CancelToken())
    assert len(first.text) >= 2 and "cached_from" not in first.extras, first
    pipeline.finalize(first, RequestContext("doc", "python", first.started_s))

    typed = text + first.text[0]
    hit = pipeline.run(CompletionRequest("cached-1", "doc", typed, len(typed)), CancelToken())
    assert hit.text == first.text[1:] and hit.extras["cached_from"] == "engine-1"
    assert (hit.prompt_tokens, hit.completion_tokens, hit.spans) == (0, 0, [])
    record = pipeline.finalize(hit, RequestContext("doc", "python", hit.started_s))
    assert (record.outcome, record.total_j, record.prefill_j, record.decode_j) == ("cached", 0.0, 0.0, 0.0)
    assert (record.method, record.meter, record.uncertainty_j) == ("measured", "cache", 0.0)
    assert pipeline.accept("cached-1")
    row = stored(targets["all"], "cached-1")
    assert (row["outcome"], row["total_j"], row["accepted"]) == ("cached", 0.0, 1)

    cancel = CancelToken()
    cancel.cancel()
    late = pipeline.run(CompletionRequest("cached-2", "doc", typed, len(typed)), cancel)
    record = pipeline.finalize(late, RequestContext("doc", "python", late.started_s))
    assert (record.outcome, record.total_j, record.meter) == ("cancelled", 0.0, "cache")


def replay_planted(target: PipelineTarget, name: str, planted: str) -> tuple[ConfigRun, Segment]:
    """Type 12 characters of a definition of ``SOURCE``, with ``planted`` remembered as shown where typing starts."""
    segment = Segment.from_text(name, SOURCE, 12, seed=1)
    cache = target.pipeline.suggestion_cache
    assert cache is not None
    before = segment.before
    cache.remember(f"planted-{name}", f"file:///bench/cache/{name}", before, len(before), planted)
    run = ConfigRun(CACHE_ONLY)
    for _ in replay(target, run, [segment], seed=1):
        pass
    run.records = target.records()
    return run, segment


def test_the_oracle_accepts_a_planted_suggestion_and_rejects_a_wrong_one(targets: dict[str, PipelineTarget]) -> None:
    target = targets["cache"]
    right = Segment.from_text("right.py", SOURCE, 12, seed=1).typed.split("\n")[0]  # e.g. "def f7(x):"
    run, _ = replay_planted(target, "right.py", right)
    # the first character typed, the rest of the line taken with Tab (the model may be right after it too: the
    # body's first line at the editor's indentation, which SOURCE repeats twelve times)
    assert run.tabs == len(run.accepted_ids) >= 1 and run.shown_log[0]["taken"] == len(right) - 1
    assert (run.shown_log[0]["position"], run.shown_log[0]["cached"]) == (1, True)
    accepted = stored(target, run.accepted_ids[0])
    assert (accepted["outcome"], accepted["total_j"], accepted["method"], accepted["meter"], accepted["accepted"]) \
        == ("cached", 0.0, "measured", "cache", 1)
    assert run.accepted_chars == sum(s["taken"] for s in run.shown_log)
    assert run.stop_reasons["cached"] >= 1

    wrong = right.replace("(x)", "(z)")
    run, _ = replay_planted(target, "wrong.py", wrong)
    # the planted suggestion's rest, served from the cache while the typing agreed with it (a suggestion the model
    # made meanwhile may be served from the cache too, and be right: it is not the planted one)
    planted = [s for s in run.shown_log if s["cached"] and wrong.endswith(s["suggestion"])]
    assert planted and not any(s["taken"] for s in planted)  # shown while the typing agreed with it, never taken
    assert run.stop_reasons["cached"] >= 1


def test_the_last_suggestion_is_judged_by_what_the_file_goes_on_with_at_the_editor_indentation(
        targets: dict[str, PipelineTarget]) -> None:
    """Enter types the newline and the indentation (the editor's auto-indent), even where the segment ends inside
    it; a suggestion shown after the last keystroke is judged by the file's continuation, and one that repeats the
    indentation the editor already put there is not what the developer types next."""
    target = targets["cache"]
    cache = target.pipeline.suggestion_cache
    assert cache is not None
    for name, planted, taken in (("end-right.py", "y = x + 8", True), ("end-indent.py", "    y = x + 8", False)):
        head = SOURCE.index("def f8(x):") + len("def f8(x):")  # one keystroke, Enter: no model suggestion before
        segment = Segment(name, SOURCE[:head], SOURCE[head:head + 2], SOURCE[head + 2:head + 200])
        assert segment.typed == "\n " and segment.after.startswith("   y = x + 8\n")
        document = segment.before + segment.typed + segment.after[:3]  # the cursor at the body's indentation
        cache.remember(f"planted-{name}", f"file:///bench/cache/{name}", document, len(document), planted)
        run = ConfigRun(CACHE_ONLY)
        for _ in replay(target, run, [segment], seed=1):
            pass
        run.records = target.records()
        last = run.shown_log[-1]
        assert (last["position"], last["cached"]) == (len(segment.typed) + 3, True), run.shown_log
        assert last["next"].startswith("y = x + 8") and run.keystrokes == 1 and len(run.shown_log) == 1
        assert (len(run.accepted_ids) == 1) is taken and (last["taken"] == len("y = x + 8")) is taken
        assert sum(s["taken"] for s in run.shown_log) == run.accepted_chars and len(run.shown_log) == run.shown


# -- the command ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bench_cli")
    source = folder / "module.py"
    source.write_text(SOURCE, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "greentrack", "bench", str(source), "--chars", "36", "--seed", "2",
         "--configs", "naive,debounce,all", "--max-tokens", "12", "--context-tokens", "192", "--json",
         "--html", str(folder / "bench.html"), "--db", str(folder / "bench.db")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {"summary": json.loads(out.stdout), "folder": folder}


CONFIG_KEYS = {
    "name", "description", "settings", "keystrokes", "tabs", "requests", "superseded_before_model", "completions",
    "by_outcome", "stop_reasons", "shown", "accepted", "acceptance_rate", "typed_chars", "accepted_chars", "energy",
    "j_per_accepted", "j_per_completion", "j_per_generated_token", "wasted", "latency_ms", "tokens",
    "developer_time_s", "vs_naive", "suggestions",
}


def test_the_json_has_every_figure(bench_run: dict[str, Any]) -> None:
    summary = bench_run["summary"]
    assert set(summary) == {"meta", "configurations", "findings", "goals"}
    for key in ("command", "date", "machine", "load_average_start", "load_average_end", "model", "device", "meter",
                "method", "seed", "files", "chars_per_file"):
        assert summary["meta"][key] is not None, key
    assert [c["name"] for c in summary["configurations"]] == ["naive", "debounce", "all"]
    for c in summary["configurations"]:
        assert set(c) == CONFIG_KEYS, c["name"]
        assert set(c["energy"]) == {"value_j", "uncertainty_j", "method", "meter"}
        assert c["energy"]["method"] in ("measured", "attributed", "estimated") and c["energy"]["value_j"] >= 0
        assert set(c["wasted"]) == {"energy_j", "share", "completions", "cancelled", "never_accepted"}
        assert set(c["latency_ms"]) == {"p50", "p95", "n", "model"}
        cached = sum(1 for s in c["suggestions"] if s["cached"])  # the model's latencies leave the cache hits out
        assert c["latency_ms"]["model"]["n"] == c["latency_ms"]["n"] - cached
        assert all(s["latency_ms"] > 0 for s in c["suggestions"])
        assert set(c["tokens"]) == {"prompt", "prompt_computed", "prompt_reused", "generated"}
        assert c["keystrokes"] + c["tabs"] == c["requests"]
        assert c["completions"] == c["requests"] - c["superseded_before_model"]
        assert len(c["suggestions"]) == c["shown"]  # each one judged: what was suggested, what came next
        assert sum(s["taken"] for s in c["suggestions"]) == c["accepted_chars"]["chars"]
        assert sum(1 for s in c["suggestions"] if s["taken"]) == c["accepted"]
    assert {f["key"] for f in summary["findings"]} == {"babbling_suppression", "inference_optimizations"}
    assert len(summary["goals"]) == 2


def test_the_naive_configuration_really_disables_each_optimization(bench_run: dict[str, Any]) -> None:
    by_name = {c["name"]: c for c in bench_run["summary"]["configurations"]}
    naive, debounced, everything = by_name["naive"], by_name["debounce"], by_name["all"]
    assert naive["settings"] == {"debounce_ms": 0, "kv_reuse": False, "stop_rules": False, "cache": False,
                                 "model": None}
    assert naive["tokens"]["prompt_reused"] == 0 and naive["tokens"]["prompt_computed"] > 0  # no KV reuse
    stop_rules = {"stop_token", "fence", "newline", "blank_lines", "dedent", "suffix", "repeat"}
    assert not set(naive["stop_reasons"]) & (stop_rules | {"cached"})  # no stop rule ended it, no cache served it
    assert "cached" not in naive["by_outcome"]
    assert naive["completions"] > debounced["completions"]  # no debounce: keystrokes reach the model
    assert everything["tokens"]["prompt_reused"] > 0
    assert set(everything["stop_reasons"]) & (stop_rules | {"eos", "cached"})
    # the records are the product's: each configuration's own developer in the kept database
    with sqlite3.connect(bench_run["folder"] / "bench.db") as db:
        counts = dict(db.execute("SELECT developer, COUNT(*) FROM completions GROUP BY developer").fetchall())
    assert counts == {f"bench:{n}": c["completions"] for n, c in by_name.items() if c["completions"]}


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_the_html_renders_its_charts_in_headless_chromium(bench_run: dict[str, Any]) -> None:
    from tests.report.test_html_browser import _pixels, decode_png

    html = bench_run["folder"] / "bench.html"
    profile = bench_run["folder"] / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert '<svg id="chart-energy"' in dom and '<svg id="chart-latency"' in dom
    assert dom.count('class="bar-p50"') >= 1 and "Solovyeva" in dom and "Fernandez" in dom
    shot = bench_run["folder"] / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=900,1400",  # type: ignore[list-item]
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    width, _, rows = decode_png(shot.read_bytes())
    colors = _pixels(rows, width, len(rows[0]) // width)
    assert (0x4F, 0x7F, 0xB8) in colors  # the p50 bars are drawn
