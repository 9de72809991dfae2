"""``greentrack serve --backend vllm`` end to end on the CPU vLLM build: one real server process, four developers with
their own tokens, their requests batched by the engine (no global serialization), every figure attributed by engine
step (meter ``…/steps``), and the stored completions + stored idle energy = the meter's delta that ``/metrics``
exposes. Cancellation by client disconnect, and the official ``openai`` client once. Each for vLLM's engine core in
the server's process and in its own (``--engine-process``)."""

from __future__ import annotations

import importlib.util
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.serve.support import Server, hang_up_during, native, wait_row

from greentrack.serve.models import STEP_FIELDS
from greentrack.store import Store

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]

DEVELOPERS = ("ana@example.com", "ben@example.com", "cai@example.com")
ADMIN = "ops@example.com"
SOURCE = '''"""Inventory helpers."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int

    def total(self) -> float:
        return'''
LONG_LINE = "primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, "


@pytest.fixture(scope="module", params=["in-process", "engine-process"])
def team(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """One server per layout: vLLM's engine core in the server's process, then in its own (``--engine-process``:
    step records sent back over a socket, the estimate counting that process's CPU time)."""
    db = tmp_path_factory.mktemp("serve-vllm") / "team.db"
    with Store(db) as store:
        tokens = {dev: store.add_token(dev) for dev in DEVELOPERS}
        tokens[ADMIN] = store.add_token(ADMIN, admin=True)
    # a long idle period: idle windows are stored only when /metrics asks (and at least every 30 s), so the
    # database and the exposed meter total can be compared between two requests (the last --idle-period counts)
    layout = ("--engine-process",) if request.param == "engine-process" else ()
    server = Server(db, extra=("--backend", "vllm", "--max-num-seqs", "8", "--idle-period", "3600", *layout)).start()
    try:
        yield server, tokens
    finally:
        server.kill()


def _rows(db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        return [dict(r) for r in store.completions()]


def _metrics(server: Server, token: str) -> dict[str, Any]:
    with server.client(token) as admin:
        response = admin.get("/metrics")
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def _value(families: dict[str, Any], name: str) -> float:
    return float(sum(s.value for s in families[name].samples))


def test_concurrent_developers_are_batched_and_add_up_with_idle_to_the_meter(
    team: tuple[Server, dict[str, str]],
) -> None:
    server, tokens = team
    with server.client(tokens[ADMIN]) as admin:
        health = admin.get("/health").json()
    assert health["backend"] == "vllm" and health["slots"] == 8
    answers: dict[str, dict[str, Any]] = {}
    barrier = threading.Barrier(len(DEVELOPERS))

    def developer(dev: str, extra_lines: int) -> None:
        text = f"# {uuid.uuid4().hex}\n" + "\n".join(f"X{i} = {i}" for i in range(extra_lines)) + "\n" + SOURCE
        with server.client(tokens[dev], timeout_s=120) as client:
            barrier.wait()
            response = client.post("/v1/greentrack/complete", json=native(text, max_tokens=16, uri=f"file:///{dev}"))
        assert response.status_code == 200, response.text
        answers[dev] = response.json()

    threads = [threading.Thread(target=developer, args=(dev, 40 * i)) for i, dev in enumerate(DEVELOPERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(answers) == set(DEVELOPERS), server.log()[-3000:]
    greens = [a["greentrack"] for a in answers.values()]
    # no global serialization: nobody waited for another's whole generation
    for i, g in enumerate(greens):
        others_s = sum(o["prefill_ms"] + o["decode_ms"] for j, o in enumerate(greens) if j != i)
        assert 0 <= g["queue_ms"] < 0.5 * others_s, greens
    records = {}
    for dev, answer in answers.items():
        with server.client(tokens[dev]) as client:
            record = client.get(f"/v1/greentrack/completions/{answer['completion_id']}", params={"wait": 10}).json()
        assert record["energy_final"] is True and record["developer"] == dev
        assert record["meter"].endswith("/steps") and record["total_j"] > 0 and record["prefill_j"] > 0
        records[dev] = record

    families = _metrics(server, tokens[ADMIN])  # stores the idle energy up to now first
    meter_j = _value(families, "greentrack_meter_energy_joules")
    rows = _rows(server.db)
    # every step-attributed completion keeps its step counts (schema v6)
    stepped = [row for row in rows if row["meter"].endswith("/steps")]
    assert len(stepped) >= len(DEVELOPERS)
    for row in stepped:
        assert row["steps"] >= 1, row
        assert 0 <= row["batched_steps"] <= row["steps"] and 1.0 <= row["mean_batch_size"] <= 8.0, row
    # their requests overlapped in the engine: each step holds every running request, so they shared steps
    concurrent = [r for r in rows if r["completion_id"] in {a["completion_id"] for a in answers.values()}]
    assert len(concurrent) == len(DEVELOPERS)
    assert sum(1 for r in concurrent if r["batched_steps"] > 0) >= 2, concurrent
    # the HTTP record carries the same step figures (a remote editor mirrors them into its own database)
    for row in concurrent:
        record = records[row["developer"]]
        assert {name: record[name] for name in STEP_FIELDS} == {name: row[name] for name in STEP_FIELDS}, record
    with Store(server.db) as store:
        idle = [{"energy_j": e, "meter": m} for e, m in store.conn.execute("SELECT energy_j, meter FROM idle_energy")]
    assert idle and all(r["meter"].endswith("/steps") for r in idle)
    stored_j = math.fsum(r["total_j"] for r in rows) + math.fsum(r["energy_j"] for r in idle)
    assert meter_j > 0 and abs(stored_j - meter_j) <= 1e-6 * meter_j, (stored_j, meter_j)
    idle_metric = [s for s in families["greentrack_idle_energy_joules"].samples if s.name.endswith("_total")]
    assert math.isclose(sum(s.value for s in idle_metric), math.fsum(r["energy_j"] for r in idle), rel_tol=1e-9)
    assert 0.0 < _value(families, "greentrack_utilisation") < 1.0


def test_client_disconnect_cancels_within_a_step_and_is_logged_with_energy(
    team: tuple[Server, dict[str, str]],
) -> None:
    server, tokens = team
    cid = f"gone-{uuid.uuid4().hex[:8]}"
    hang_up_during(server, tokens[DEVELOPERS[1]], native(LONG_LINE, completion_id=cid, max_tokens=400), after_s=0.6)
    row = wait_row(server, cid, timeout_s=30)
    assert row["outcome"] == "cancelled" and row["developer"] == DEVELOPERS[1]
    assert row["completion_tokens"] < 400 and row["total_j"] > 0 and row["meter"].endswith("/steps")
    assert "client gone" in server.log()
    # still adding up with the cancelled one in
    time.sleep(0.5)
    meter_j = _value(_metrics(server, tokens[ADMIN]), "greentrack_meter_energy_joules")
    with Store(server.db) as store:
        stored_j = math.fsum(r["total_j"] for r in store.completions()) + math.fsum(
            r[0] for r in store.conn.execute("SELECT energy_j FROM idle_energy"))
    assert abs(stored_j - meter_j) <= 1e-6 * meter_j, (stored_j, meter_j)


def test_the_openai_client_once(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=tokens[DEVELOPERS[2]], max_retries=0, timeout=120)
    done = client.completions.create(model="embedded", prompt="def square(x):\n    return ", max_tokens=8)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("stop", "length")
    green = (done.model_extra or {})["greentrack"]
    assert green["completion_id"] == done.id and green["prompt_tokens"] > 0 and green["queue_ms"] >= 0
    with server.client(tokens[DEVELOPERS[2]]) as raw:
        record = raw.get(f"/v1/greentrack/completions/{done.id}", params={"wait": 10}).json()
    assert record["energy_final"] and record["meter"].endswith("/steps")


def test_the_team_report_has_the_servers_figures(team: tuple[Server, dict[str, str]]) -> None:
    server, tokens = team
    with server.client(tokens[DEVELOPERS[0]]) as developer:
        assert developer.get("/v1/greentrack/report", params={"server": "true"}).status_code == 403
    with server.client(tokens[ADMIN]) as admin:
        response = admin.get("/v1/greentrack/report", params={"server": "true"})
        assert isinstance(admin.get("/v1/greentrack/report").json(), list)  # without ?server: the list, as before
    assert response.status_code == 200, response.text
    body = response.json()
    assert {d["developer"] for d in body["developers"]} == set(DEVELOPERS)
    week, since = body["server"]["week"], body["server"]["since_start"]
    assert week["developer_hours"] >= len(DEVELOPERS) and week["idle_j"] > 0
    assert week["j_per_developer_hour"] == pytest.approx(week["energy_j"] / week["developer_hours"])
    report_j = sum(d["energy_j"]["total"] for d in body["developers"])  # the report rounds to µJ
    assert abs(week["completions_j"] - report_j) <= 1e-6 * len(body["developers"])
    assert 0.0 < since["utilisation"] < 1.0 and since["window_s"] > 0
    assert abs(since["conservation_error_j"]) <= 1e-9 * since["meter_j"]
    # each developer's share of batched steps, as the team view (?all=true) gives it
    with server.client(tokens[ADMIN]) as admin:
        team_view = admin.get("/v1/greentrack/report", params={"all": "true"}).json()
    batched = {d["developer"]: d["batched_steps"] for d in team_view}
    assert set(batched) == set(DEVELOPERS)
    assert batched == {d["developer"]: d["batched_steps"] for d in body["developers"]}
    for figure in batched.values():
        assert figure["completions"] >= 1 and figure["steps"] >= 1 and 0 <= figure["batched"] <= figure["steps"]
        assert figure["share"] == pytest.approx(figure["batched"] / figure["steps"], abs=1e-4)
    assert sum(f["batched"] for f in batched.values()) > 0
