"""``greentrack serve`` end to end: one real server process (embedded model, transformers backend) with tokens
for two developers and an administrator, driven over HTTP, by the official ``openai`` client and raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.serve.support import Server, greentrack, hang_up_during, native, wait_row

from greentrack.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
MAX_BODY = 65536
#: A prompt the embedded model continues on one line until its time budget (1.5 s): long enough to cancel.
LONG_LINE = "primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, "


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    db = tmp_path_factory.mktemp("serve") / "team.db"
    with Store(db) as store:
        tokens = {ALICE: store.add_token(ALICE), BOB: store.add_token(BOB), ADMIN: store.add_token(ADMIN, admin=True)}
    server = Server(db, extra=("--max-body", str(MAX_BODY), "--body-timeout", "1")).start()
    try:
        yield server, tokens
    finally:
        server.kill()


def _rows(db: Path) -> dict[str, dict[str, Any]]:
    with Store(db) as store:
        return {r["completion_id"]: r for r in store.completions()}


# -- who is who ---------------------------------------------------------------------------------------------


def test_health_needs_no_token_but_everything_else_does(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client() as anonymous:
        health = anonymous.get("/health")
        assert health.status_code == 200 and health.json()["model"] == "embedded"
        assert health.json()["suggestion_cache"] is True  # on by default (--no-suggestion-cache: see its tests)
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"),
                             ("GET", "/v1/greentrack/report"), ("POST", "/v1/greentrack/complete")):
            response = anonymous.request(method, path, json={})
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    with server.client("gt_not-a-token") as stranger:
        assert stranger.get("/v1/models").status_code == 401
        assert "unknown or revoked" in stranger.get("/v1/models").json()["error"]["message"]
    with server.client(tokens[ALICE]) as alice:
        assert alice.get("/v1/models").json()["data"][0]["id"] == "embedded"
        assert alice.get("/metrics").status_code == 403  # the team's figures: administrators only


def test_concurrent_developers_get_their_own_rows_and_never_each_others(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    answers: dict[str, list[dict[str, Any]]] = {ALICE: [], BOB: []}

    def work(developer: str, n: int) -> None:
        with server.client(tokens[developer]) as client:
            for i in range(n):
                body = native(f"def add_{i}(a, b):\n    return ", uri=f"file:///{developer}.py")
                response = client.post("/v1/greentrack/complete", json=body)
                assert response.status_code == 200, response.text
                answers[developer].append(response.json())

    threads = [threading.Thread(target=work, args=(ALICE, 3)), threading.Thread(target=work, args=(BOB, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers[ALICE]) == 3 and len(answers[BOB]) == 2
    with server.client(tokens[ALICE]) as alice, server.client(tokens[BOB]) as bob:
        for answer in answers[ALICE]:
            cid = answer["completion_id"]
            record = alice.get(f"/v1/greentrack/completions/{cid}", params={"wait": 10}).json()
            assert record["energy_final"] is True and record["developer"] == ALICE
            assert record["total_j"] >= 0 and record["method"] in ("measured", "attributed", "estimated")
            # the engine-step figures: keys always there, null on the transformers backend (not step-attributed)
            assert (record["steps"], record["batched_steps"], record["mean_batch_size"]) == (None, None, None)
            assert bob.get(f"/v1/greentrack/completions/{cid}").status_code == 404
            assert bob.post("/v1/greentrack/accept", json={"completion_id": cid}).status_code == 404
    rows = _rows(server.db)
    assert {rows[a["completion_id"]]["developer"] for a in answers[ALICE]} == {ALICE}
    assert {rows[a["completion_id"]]["developer"] for a in answers[BOB]} == {BOB}


def test_the_developer_comes_from_the_token_not_the_body(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[BOB]) as bob:
        response = bob.post("/v1/greentrack/complete", json=native("x = 1\ny = ", developer=ALICE))
        assert response.status_code == 422  # unknown fields are refused, not trusted
        cid = bob.post("/v1/greentrack/complete", json=native("x = 1\ny = ")).json()["completion_id"]
    assert wait_row(server, cid)["developer"] == BOB


# -- the OpenAI-compatible endpoint -------------------------------------------------------------------------


def test_official_openai_client_plain_fim_and_streaming(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=tokens[ALICE], max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["embedded"]
    done = client.completions.create(model="embedded", prompt="def square(x):\n    return ", max_tokens=8)
    assert done.object == "text_completion" and len(done.choices) == 1
    assert isinstance(done.choices[0].text, str) and done.choices[0].finish_reason in ("stop", "length")
    extra = done.model_extra or {}
    green = extra["greentrack"]
    assert green["completion_id"] == done.id
    assert green["prompt_tokens"] > 0 and green["completion_tokens"] >= 1
    assert green["latency_ms"] >= green["prefill_ms"] > 0 and green["queue_ms"] >= 0
    # the transformers backend stamps no vLLM admission nor last token: only the way to the engine is known
    timings = green["server_timings_ms"]
    assert timings["admit"] is None and timings["after_decode"] is None
    assert 0 <= timings["before_engine"] <= green["latency_ms"] - green["prefill_ms"] - green["decode_ms"] + 0.01
    assert timings["to_scheduler"] + timings["to_prompt"] == pytest.approx(timings["before_engine"], abs=0.003)
    assert done.usage is not None and done.usage.prompt_tokens == green["prompt_tokens"]
    with server.client(tokens[ALICE]) as raw:
        record = raw.get(f"/v1/greentrack/completions/{done.id}", params={"wait": 10}).json()
    assert record["energy_final"] and record["uri"] == "openai:completions"

    fim = client.completions.create(model="embedded", prompt="def area(r):\n    return ", suffix="\n\nprint(area(2))\n",
                                    max_tokens=8)
    fim_green = (fim.model_extra or {})["greentrack"]
    assert fim_green["prompt_tokens"] > 0  # the embedded model has no FIM tokens: a prefix-only prompt

    chunks = list(client.completions.create(model="embedded", prompt="for i in range(", max_tokens=6, stream=True))
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].text == ""
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert (chunks[-1].model_extra or {})["greentrack"]["completion_id"] == chunks[0].id

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="embedded", prompt="x", max_tokens=100000)


def test_stream_ends_with_done(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[BOB]) as bob, bob.stream(
        "POST", "/v1/completions", json={"model": "embedded", "prompt": "import ", "max_tokens": 4, "stream": True}
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "greentrack" in last


# -- after the suggestion: accept, cancel, disconnect --------------------------------------------------------


def test_accept_marks_the_row(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[ALICE]) as alice:
        cid = alice.post("/v1/greentrack/complete", json=native("items = [1, 2, 3]\ntotal = ")).json()["completion_id"]
        response = alice.post("/v1/greentrack/accept", json={"completion_id": cid})
        assert response.status_code == 200 and response.json()["accepted"] is True
        assert alice.get(f"/v1/greentrack/completions/{cid}").json()["accepted"] is True
        assert alice.post("/v1/greentrack/accept", json={"completion_id": "no-such-id-123"}).status_code == 404
    assert wait_row(server, cid)["accepted"] == 1


def test_explicit_cancel_stops_generation_and_logs_its_energy(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    cid = "cancel-me-0001"
    answer: dict[str, Any] = {}

    def generate() -> None:
        with server.client(tokens[ALICE]) as alice:
            answer.update(alice.post("/v1/greentrack/complete", json=native(
                LONG_LINE, completion_id=cid, max_tokens=400)).json())

    worker = threading.Thread(target=generate)
    worker.start()
    with server.client(tokens[ALICE]) as alice, server.client(tokens[BOB]) as bob:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the engine has it
            response = bob.post("/v1/greentrack/cancel", json={"completion_id": cid})
            assert response.status_code == 404  # never someone else's
            mine = alice.post("/v1/greentrack/cancel", json={"completion_id": cid})
            if mine.status_code == 200:
                assert mine.json()["cancelled"] is True, "the generation ended before the cancel came"
                break
            time.sleep(0.05)
    worker.join(timeout=60)
    assert answer["cancelled"] is True and answer["text"] == ""
    row = wait_row(server, cid)
    assert row["outcome"] == "cancelled" and row["developer"] == ALICE and row["total_j"] >= 0


def test_client_disconnect_cancels_and_is_logged(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    cid = "disconnect-0001"
    hang_up_during(server, tokens[BOB], native(LONG_LINE, completion_id=cid, max_tokens=400), after_s=0.4)
    row = wait_row(server, cid)
    assert row["outcome"] == "cancelled" and row["developer"] == BOB
    assert row["completion_tokens"] < 400
    assert "client gone" in server.log()


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "words"), [
    (b'{"model": "embedded", "prompt": ', 400, "not valid JSON"),
    (b'{"model": "embedded", "prompt": 42}', 422, "prompt"),
    (b'{"model": "embedded", "prompt": "x", "max_tokens": 0}', 422, "max_tokens"),
    (b'{"model": "embedded", "prompt": "x", "max_tokens": "many"}', 422, "max_tokens"),
    (b'{"model": "embedded", "prompt": "a\\u0000b"}', 400, "binary"),
    (b'{"model": "embedded", "prompt": ["a", "b"]}', 422, "one prompt"),
])
def test_bad_openai_bodies(team: tuple[Server, dict[str, str]], body: bytes, status: int, words: str) -> None:
    server, tokens = team
    with server.client(tokens[ALICE]) as alice:
        response = alice.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_bad_native_bodies_and_limits(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[ALICE]) as alice:
        past = alice.post("/v1/greentrack/complete", json=native("abc", offset=10))
        assert past.status_code == 400 and "past the end" in past.json()["error"]["message"]
        line = alice.post("/v1/greentrack/complete", json={"text": "a\nb", "position": {"line": 5, "character": 0}})
        assert line.status_code == 400 and "line 5" in line.json()["error"]["message"]
        both = alice.post("/v1/greentrack/complete",
                          json={"text": "a", "offset": 1, "position": {"line": 0, "character": 1}})
        assert both.status_code == 422 and "exactly one" in both.json()["error"]["message"]
        form = alice.post("/v1/greentrack/complete", content=b"text=a", headers={"Content-Type": "text/plain"})
        assert form.status_code == 415
        huge = alice.post("/v1/greentrack/complete", json=native("x" * (MAX_BODY + 1)))
        assert huge.status_code == 413
        assert alice.get("/v1/greentrack/completions/x", params={"wait": 999}).status_code == 422
        # a prompt far longer than the model's context is cut as in-process, not refused
        long_text = "value = 1\n" * 3000
        ok = alice.post("/v1/greentrack/complete", json=native(long_text, max_tokens=2))
        assert ok.status_code == 200, ok.text
        assert ok.json()["greentrack"]["prompt_tokens"] <= 1100
    # a body that never comes: 408 after --body-timeout, and the server keeps serving
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tokens[ALICE]}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        sock.settimeout(10)
        assert b" 408 " in sock.recv(4096).split(b"\r\n")[0] + b" "
    assert httpx.get(f"{server.url}/health").status_code == 200


# -- figures: metrics, report, idle energy -----------------------------------------------------------------------


def test_metrics_parse_and_count_by_developer(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[BOB]) as bob:
        cid = bob.post("/v1/greentrack/complete", json=native("name = 'bob'\nprint(")).json()["completion_id"]
        bob.get(f"/v1/greentrack/completions/{cid}", params={"wait": 10})
    time.sleep(1.5)  # one idle period (--idle-period 1)
    with server.client(tokens[ADMIN]) as admin:
        response = admin.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    completions = [s for s in families["greentrack_completions"].samples if s.name.endswith("_total")]
    assert any(s.labels["developer"] == BOB and s.labels["model"] == "embedded" and s.value >= 1 for s in completions)
    energy = [s for s in families["greentrack_energy_joules"].samples if s.name.endswith("_total")]
    assert {s.labels["method"] for s in energy} <= {"measured", "attributed", "estimated"}
    assert sum(s.value for s in energy if s.labels["developer"] == BOB) > 0
    idle = [s for s in families["greentrack_idle_energy_joules"].samples if s.name.endswith("_total")]
    assert idle and sum(s.value for s in idle) > 0
    with Store(server.db) as store:
        assert store.idle_totals(since_ts="2000-01-01T00:00:00+00:00",
                                 until_ts="2100-01-01T00:00:00+00:00").energy_j > 0


def test_report_is_own_or_the_teams(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[ALICE]) as alice:
        own = alice.get("/v1/greentrack/report").json()
        assert own["developer"] == ALICE and own["completions"] >= 1
        assert alice.get("/v1/greentrack/report", params={"all": "true"}).status_code == 403
        assert alice.get("/v1/greentrack/report", params={"week": "2024-W99"}).status_code == 400
    with server.client(tokens[ADMIN]) as admin:
        everyone = admin.get("/v1/greentrack/report").json()
    assert {r["developer"] for r in everyone} >= {ALICE, BOB}


def test_revoked_token_is_refused_at_once(team: tuple[Server, dict[str, str]]) -> None:
    server, _ = team
    with Store(server.db) as store:
        token = store.add_token("carol@example.com")
    with server.client(token) as carol:
        assert carol.get("/v1/models").status_code == 200
        revoked = greentrack("token", "revoke", "carol@example.com", "--db", str(server.db))
        assert revoked.returncode == 0, revoked.stderr
        assert carol.get("/v1/models").status_code == 401
