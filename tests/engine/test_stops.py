"""Stop rules and output cleaning (pure functions)."""

from __future__ import annotations

from greentrack.engine.stops import (
    budget_stop,
    check_stop,
    clean_completion,
    stop_context,
    stop_token_ids,
)


def test_mode_line_when_text_follows_cursor_or_line_has_text() -> None:
    assert stop_context("x = foo(", ")\n").mode == "line"  # text after the cursor wins over an opener
    assert stop_context("x = foo(a", ")\n").mode == "line"
    assert stop_context("    total = ", "\n").mode == "line"
    assert stop_context("x = 1\n", "\ny = 2").mode == "line"  # empty line, no opener before it


def test_mode_block_after_opener() -> None:
    ctx = stop_context("def f(x):\n    ", "\n")
    assert ctx.mode == "block" and ctx.base_indent == 0
    ctx = stop_context("class A:\n    def f(self):\n        ", "")
    assert ctx.mode == "block" and ctx.base_indent == 4
    assert stop_context("if (x) {\n  ", "\n}").mode == "block"
    ctx = stop_context("def f(x):", "")
    assert ctx.mode == "block" and ctx.opener_is_cursor_line


def test_line_mode_stops_at_newline() -> None:
    ctx = stop_context("    total = ", "\n")
    assert check_stop("sum(values)", ctx) is None
    d = check_stop("sum(values)\n    return", ctx)
    assert d is not None and d.text == "sum(values)" and d.reason == "newline"


def test_block_mode_stops_at_dedent() -> None:
    ctx = stop_context("def f(x):\n    ", "")
    d = check_stop("y = x + 1\n    return y\n\ndef g():\n", ctx)
    assert d is not None and d.reason == "dedent" and d.text == "y = x + 1\n    return y"


def test_block_mode_keeps_its_closing_brace() -> None:
    ctx = stop_context("function f() {\n  ", "")
    d = check_stop("return 1;\n}\nfunction g() {\n", ctx)
    assert d is not None and d.text == "return 1;\n}"


def test_block_mode_stops_at_repeated_line() -> None:
    ctx = stop_context("for x in xs:\n    ", "")
    d = check_stop("print(x)\n    print(x)\n", ctx)
    assert d is not None and d.reason == "repeat" and d.text == "print(x)"


def test_block_mode_stops_at_line_already_after_cursor() -> None:
    ctx = stop_context("def f(x):\n    ", "\n    return y\n")
    d = check_stop("y = x * 2\n    return y\n", ctx)
    assert d is not None and d.reason == "suffix" and d.text == "y = x * 2"


def test_block_mode_stops_at_two_blank_lines() -> None:
    ctx = stop_context("def f(x):\n    ", "")
    d = check_stop("y = 1\n\n\n    z = 2\n", ctx)
    assert d is not None and d.reason == "blank_lines" and d.text == "y = 1"


def test_stops_at_chat_and_end_tokens_and_fences() -> None:
    ctx = stop_context("x = ", "")
    for token in ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "<file_sep>"):
        d = check_stop(f"42{token}junk", ctx)
        assert d is not None and d.text == "42" and d.reason == "stop_token"
    d = check_stop("```", stop_context("def f():\n    ", ""))
    assert d is not None and d.reason == "fence"


def test_budgets() -> None:
    assert budget_stop(64, 0.1, 64, 1.5) == "max_tokens"
    assert budget_stop(3, 1.6, 64, 1.5) == "max_time"
    assert budget_stop(3, 0.1, 64, 1.5) is None


def test_clean_removes_suffix_duplicates_on_the_line() -> None:
    ctx = stop_context("print(len(items", ")\n")
    assert clean_completion(", key))", ctx) == ", key)"
    ctx = stop_context("value = compute(", "a, b)\n")
    assert clean_completion("a, b)", ctx) == ""
    ctx = stop_context("x = [", "]\n")
    assert clean_completion("1, 2]", ctx) == "1, 2"


def test_clean_removes_duplicated_following_lines_in_block_mode() -> None:
    ctx = stop_context("def f(x):\n    ", "\n    return y\n")
    assert clean_completion("y = x * 2\n    return y", ctx) == "y = x * 2"


def test_clean_strips_chat_tokens_fences_and_partial_stops() -> None:
    ctx = stop_context("def f():\n    ", "")
    assert clean_completion("```python\nreturn 1\n```\nmore", ctx) == "return 1"
    assert clean_completion("return 1<|im_end|>", ctx) == "return 1"
    assert clean_completion("return 1<|im_e", ctx) == "return 1"


def test_stop_token_ids_from_vocabulary() -> None:
    vocab = {"<|endoftext|>": 0, "<|im_end|>": 2, "<|im_start|>": 1, "def": 5}
    assert stop_token_ids(vocab, [2]) == {0, 1, 2}
