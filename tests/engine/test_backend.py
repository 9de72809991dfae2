"""The transformers backend on the real embedded model (CPU): completions, KV reuse, cancellation, healing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from greentrack.engine.loading import LoadedModel
from greentrack.engine.transformers_backend import TransformersBackend
from greentrack.engine.types import CancelToken, CompletionRequest
from greentrack.errors import BadInput

SLOW = 60.0  # max_time_s for tests: the 2-core test machine is shared; results must not depend on its load


def stdlib_source(name: str, lines: int = 80) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin
    return "".join(Path(spec.origin).read_text().splitlines(keepends=True)[:lines])


def req(text: str, offset: int, doc: str = "doc", n: int = 8, rid: str = "r") -> CompletionRequest:
    return CompletionRequest(rid, doc, text, offset, max_tokens=n, max_time_s=SLOW, context_tokens=256)


def test_completes_a_function_stub(backend: TransformersBackend) -> None:
    text = 'def add(a, b):\n    """Return the sum of a and b."""\n    return '
    r = backend.complete(req(text, len(text), doc="stub"), CancelToken())
    assert r.text.strip() and "\n" not in r.text  # line mode: one line
    assert "a" in r.text and "b" in r.text
    assert r.prompt_tokens > 10 and r.completion_tokens >= 2 and not r.cancelled
    assert r.stop_reason in {"newline", "eos", "max_tokens"}
    pre, dec = r.span("prefill"), r.span("decode")
    assert pre is not None and dec is not None
    assert r.started_s <= pre.start_s < pre.end_s <= dec.start_s <= dec.end_s <= r.ended_s
    assert pre.work == r.prompt_tokens - r.reused_prompt_tokens and dec.work == r.completion_tokens - 1


def test_completion_inside_real_stdlib_code(backend: TransformersBackend) -> None:
    src = stdlib_source("textwrap", 120)
    cursor = src.index("def __init__") + len("def __init__(")
    r = backend.complete(req(src, cursor, doc="textwrap"), CancelToken())
    assert r.prompt_tokens > 100 and r.text  # something to insert, from a prefix-only prompt
    assert r.extras["fim"] is None


def test_reuse_gives_identical_greedy_output_and_less_prefill(loaded: LoadedModel) -> None:
    src = stdlib_source("json.decoder", 40)
    cursors = [len(src) - 200, len(src) - 199, len(src) - 150]
    with_reuse = TransformersBackend(loaded=loaded, warmup=False)
    without = TransformersBackend(loaded=loaded, warmup=False, reuse=False)
    reused_total = 0
    for i, cur in enumerate(cursors):
        a = with_reuse.complete(req(src[:cur], cur, rid=f"a{i}"), CancelToken())
        b = without.complete(req(src[:cur], cur, rid=f"b{i}"), CancelToken())
        assert a.text == b.text and a.completion_tokens == b.completion_tokens
        assert b.reused_prompt_tokens == 0
        pa, pb = a.span("prefill"), b.span("prefill")
        assert pa is not None and pb is not None
        assert pa.work == a.prompt_tokens - a.reused_prompt_tokens
        if i > 0:
            assert a.reused_prompt_tokens > 0 and pa.work < pb.work
        reused_total += a.reused_prompt_tokens
    assert reused_total > 2 * 100
    # the same prompt again: everything but one token is reused, output unchanged
    again = with_reuse.complete(req(src[: cursors[-1]], cursors[-1], rid="again"), CancelToken())
    assert again.reused_prompt_tokens == again.prompt_tokens - 1
    assert again.text == b.text


def test_reuse_is_kept_per_document(backend: TransformersBackend) -> None:
    one = "import os\n\n\ndef list_files(path):\n    return os."
    two = "import sys\n\n\ndef main(argv):\n    print(argv)\n    return "
    backend.complete(req(one, len(one), doc="one"), CancelToken())
    backend.complete(req(two, len(two), doc="two"), CancelToken())
    r = backend.complete(req(one + "l", len(one) + 1, doc="one"), CancelToken())
    assert r.reused_prompt_tokens >= r.prompt_tokens - 4


def test_static_cache_runner_matches_dynamic(loaded: LoadedModel, backend: TransformersBackend) -> None:
    static = TransformersBackend(loaded=loaded, cache="static", warmup=False)
    src = stdlib_source("textwrap", 40)
    for i, cur in enumerate((len(src) - 30, len(src) - 29)):
        a = static.complete(req(src, cur, doc="s", rid=f"s{i}"), CancelToken())
        b = backend.complete(req(src, cur, doc="d-static", rid=f"d{i}"), CancelToken())
        assert a.text == b.text and a.completion_tokens == b.completion_tokens
    assert a.reused_prompt_tokens > 0 and a.extras["runner"] == "static"


def test_cancel_stops_within_one_decode_step(backend: TransformersBackend) -> None:
    text = "squares = [1, 4, 9, 16, 25, 36, 49, 64, 81, 100, "
    cancel = CancelToken()
    seen: list[int] = []
    at_cancel: list[int] = []
    first, cancelled = threading.Event(), threading.Event()

    def on_token(n: int, _text: str) -> None:  # runs in the engine thread after each token
        seen.append(n)
        first.set()
        if n == 1:
            cancelled.wait(timeout=SLOW)  # make sure the cancel lands between two decode steps

    def canceller() -> None:
        first.wait(timeout=SLOW)
        at_cancel.append(seen[-1])
        cancel.cancel()
        cancelled.set()

    t = threading.Thread(target=canceller)
    t.start()
    r = backend.complete(req(text, len(text), doc="cancel", n=64), cancel, on_token=on_token)
    t.join()
    assert r.cancelled and r.stop_reason == "cancelled"
    assert r.completion_tokens <= at_cancel[0] + 1
    assert r.span("prefill") is not None  # its energy is still recorded


def test_cancelled_before_start_returns_nothing(backend: TransformersBackend) -> None:
    cancel = CancelToken()
    cancel.cancel()
    r = backend.complete(req("x = ", 4), cancel)
    assert r.cancelled and r.completion_tokens == 0 and r.spans == []


def test_token_healing_does_not_double_indentation(backend: TransformersBackend) -> None:
    text = "def is_even(n):\n    "
    r = backend.complete(req(text, len(text), doc="heal1"), CancelToken())
    assert r.extras["heal_text"].endswith("    ")
    assert r.text and not r.text.startswith((" ", "\t"))


def test_token_healing_completes_a_partial_word(backend: TransformersBackend) -> None:
    text = "def is_even(n):\n    retu"
    r = backend.complete(req(text, len(text), doc="heal2"), CancelToken())
    assert r.extras["heal_text"] == " retu" or r.extras["heal_text"].endswith("retu")
    assert (text + r.text).split("\n")[1].strip().startswith("return")


def test_run_synthetic_exact_work(backend: TransformersBackend) -> None:
    spans = backend.run_synthetic(40, 5)
    assert [(s.kind, s.work) for s in spans] == [("prefill", 40.0), ("decode", 5.0)]
    assert spans[0].end_s <= spans[1].start_s


@pytest.mark.parametrize(
    ("text", "offset", "match"),
    [("abc", 10, "outside"), ("", 0, "empty"), ("a\x00b", 1, "binary"), ("x = 'ok'\udcff", 3, "undecodable")],
)
def test_bad_input(backend: TransformersBackend, text: str, offset: int, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        backend.complete(req(text, offset), CancelToken())


def test_five_megabyte_file(backend: TransformersBackend) -> None:
    line = "result = transform(result, factor=2)\n"
    text = line * (5_000_000 // len(line))
    r = backend.complete(req(text, len(text) // 2, doc="big"), CancelToken())
    assert r.prompt_tokens <= 512 + 4
    assert "transform" in r.text or r.text == "" or r.completion_tokens > 0
