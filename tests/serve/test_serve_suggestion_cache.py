"""``greentrack serve --suggestion-cache/--no-suggestion-cache`` on a real server (embedded model, real SQLite file):
the same request asked twice reaches the model twice when off, and is served from the cache (0 J) when on. The
option wins over ``GREENTRACK_SUGGESTION_CACHE``, and ``GET /health`` says which (``suggestion_cache``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.serve.support import Server, native, wait_row

pytestmark = pytest.mark.e2e

CODE = "def add(a: int, b: int) -> int:\n    return "


def twice(option: str, environment: str, db: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start ``greentrack serve OPTION`` with ``GREENTRACK_SUGGESTION_CACHE=environment``, ask the same completion
    twice; the two stored rows."""
    server = Server(db, extra=(option,))
    server.env["GREENTRACK_SUGGESTION_CACHE"] = environment
    server.start()
    try:
        with server.client() as client:
            assert client.get("/health").json()["suggestion_cache"] is (option == "--suggestion-cache")
            answers = [client.post("/v1/greentrack/complete", json=native(CODE, uri="file:///add.py")).json()
                       for _ in range(2)]
        assert answers[0]["text"] and answers[1]["text"] == answers[0]["text"], (answers, server.log()[-2000:])
        cached = option == "--suggestion-cache"  # a cache hit says so in its answer, before its record is stored
        assert [a["greentrack"]["outcome"] == "cached" for a in answers] == [False, cached], answers
        first, second = (wait_row(server, answer["completion_id"]) for answer in answers)
    finally:
        server.kill()
    assert (first["outcome"], first["meter"]) != ("cached", "cache") and first["completion_tokens"] > 0
    return first, second


def test_off_the_same_request_reaches_the_model_again(tmp_path: Path) -> None:
    _, second = twice("--no-suggestion-cache", "1", tmp_path / "off.db")
    assert second["outcome"] == "shown" and second["meter"] != "cache"
    assert second["completion_tokens"] > 0 and second["prompt_tokens"] > 0


def test_on_the_same_request_is_served_from_the_cache(tmp_path: Path) -> None:
    first, second = twice("--suggestion-cache", "0", tmp_path / "on.db")
    assert (second["outcome"], second["meter"], second["method"]) == ("cached", "cache", "measured")
    assert (second["total_j"], second["uncertainty_j"], second["completion_tokens"]) == (0.0, 0.0, 0)
    assert second["completion_id"] != first["completion_id"]
