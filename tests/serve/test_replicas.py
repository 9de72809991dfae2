"""``greentrack serve --data-parallel-size N``: N replicas, each with its own engine, meter and step ledger.

The routing policy first, on replicas that are only their concurrency (no engine is needed to pick one). Then two
real vLLM engines (the CPU build, each engine core in a process of its own, as replicas run on GPUs) behind the real
service and app, served by uvicorn on 127.0.0.1. This machine has no GPUs: each replica's meter is a replayed
NVML-like counter (``tests/energy/fakes.ReplayCounter``, a different power for each "GPU"), read by the real sampler
and split by the real step ledger. What is checked: a developer's requests stay on one replica (its prefix cache),
developers are spread over both, and for each replica its stored completions + its stored idle = its own counter's
delta, as for their sum on ``/metrics``. The GPU run is ``bench/gpu_serve_dp2.sh`` (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.energy.fakes import PowerProfile, ReplayCounter
from tests.serve.support import free_port, native

from greentrack.config import Settings
from greentrack.energy.monitor import EnergyMonitor
from greentrack.pipeline import Pipeline
from greentrack.serve.replicas import ReplicaSet
from greentrack.store import Store


def _replicas(n: int, concurrency: int = 8, spill: int | None = None) -> ReplicaSet:
    """Replicas as the router sees them: a backend's batching and concurrency, nothing else."""
    pipelines = [SimpleNamespace(backend=SimpleNamespace(batches=True, concurrency=concurrency, device=f"cuda:{i}"))
                 for i in range(n)]
    return ReplicaSet(cast(list[Pipeline], pipelines), spill=spill)


def test_new_developers_go_to_the_least_busy_replica_and_stay() -> None:
    replicas = _replicas(2)
    assert replicas.slots == 16 and replicas.spill == 2
    first = {dev: replicas.acquire(dev) for dev in ("ana", "ben", "cai", "dee")}
    assert sorted(first.values()) == [0, 0, 1, 1]  # spread as they arrive
    for index in first.values():
        replicas.release(index)
    assert replicas.in_flight() == [0, 0]
    for _ in range(3):  # later requests go home: the engine there holds their prompts' prefix
        for dev, index in first.items():
            assert replicas.acquire(dev) == index
            replicas.release(index)
    assert replicas.served() == [8, 8]


def test_a_busy_home_spills_to_the_least_busy_replica_and_is_kept() -> None:
    replicas = _replicas(2, spill=2)
    assert replicas.acquire("ana") == 0
    held = [replicas.acquire("ana") for _ in range(2)]  # ana's home holds 3 requests in flight, the other none
    assert held == [0, 0]
    assert replicas.acquire("ana") == 1  # 3 - 0 > 2: spilled
    for index in (0, 0, 0, 1):
        replicas.release(index)
    assert replicas.acquire("ana") == 0  # back home once it is not busier


def test_one_replica_is_the_pipeline_alone() -> None:
    replicas = _replicas(1)
    assert [replicas.acquire(dev) for dev in ("a", "b", "c")] == [0, 0, 0]
    with pytest.raises(ValueError):
        ReplicaSet([])


# -- two real engines behind the real server ----------------------------------------------------------------

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
DEVELOPERS = ("ana@example.com", "ben@example.com", "cai@example.com", "dee@example.com")
ADMIN = "ops@example.com"
#: Each replica's "GPU": idle, then busier (the ledger splits whatever the counter says).
POWERS_W = ((60.0, 140.0), (80.0, 190.0))


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Any]]:
    """Two replicas sharing a store with tokens, the app on a loopback port: (url, tokens, service)."""
    import uvicorn

    from greentrack.energy.calibration import Calibration
    from greentrack.engine.vllm_backend import VllmBackend
    from greentrack.pipeline import host_name
    from greentrack.serve.app import build_app
    from greentrack.serve.auth import Authenticator, LockedStore
    from greentrack.serve.metrics import ServerMetrics
    from greentrack.serve.service import CompletionService

    db = tmp_path_factory.mktemp("replicas") / "team.db"
    store = Store(db)
    tokens = {dev: store.add_token(dev) for dev in DEVELOPERS}
    tokens[ADMIN] = store.add_token(ADMIN, admin=True)
    settings = Settings.from_env(db_path=db, backend="vllm")
    pipelines: list[Pipeline] = []
    for i, (idle_w, busy_w) in enumerate(POWERS_W):
        counter = ReplayCounter(PowerProfile([(0.0, idle_w), (30.0, busy_w), (600.0, busy_w)]), seed=i)
        counter.name = f"replay:gpu{i}"
        backend = VllmBackend(engine_process=True, max_num_seqs=4)
        # the replayed power does not follow the work: with the idle power measured (the median of stepless
        # intervals of a rising profile) a request could be left nothing above it; calibrated at the profile's
        # lowest draw, every step has energy above idle, as a calibrated GPU's do
        calibration = Calibration(source_meter=counter.name, device=backend.device, model=backend.model_id,
                                  host=host_name(), j_per_prompt_token=0.003, j_per_decode_token=0.2,
                                  prefill_w=busy_w, decode_w=busy_w, idle_w=idle_w, fit_error=0.05, n_points=6)
        monitor = EnergyMonitor(counter, calibration=calibration, on_demand=True)
        pipelines.append(Pipeline(settings, backend, monitor, store))
    own_store = LockedStore(store)
    service = CompletionService(ReplicaSet(pipelines), own_store, ServerMetrics(), idle_period_s=3600)
    app = build_app(service, Authenticator(own_store, local_developer="local@example.com", loopback=True))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", tokens, service
    finally:
        server.should_exit = True
        thread.join(timeout=120)  # the lifespan closes the service: replicas, ledgers, the store


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_developers_are_spread_stay_home_and_each_replica_adds_up_to_its_own_meter(
    team: tuple[str, dict[str, str], Any],
) -> None:
    url, tokens, service = team
    with _client(url, tokens[ADMIN]) as admin:
        health = admin.get("/health").json()
    assert [r["device"] for r in health["replicas"]] == ["cpu", "cpu"] and health["slots"] == 8
    assert [r["meter"] for r in health["replicas"]] == ["replay:gpu0", "replay:gpu1"]
    records: dict[str, list[dict[str, Any]]] = {dev: [] for dev in DEVELOPERS}
    barrier = threading.Barrier(len(DEVELOPERS))

    def developer(dev: str) -> None:
        source = f"# {uuid.uuid4().hex}\nclass Point:\n    def __init__(self, x: float, y: float) -> None:\n"
        with _client(url, tokens[dev]) as client:
            barrier.wait()
            for line in ("        self.x = ", "        self.x = x\n        self.y = "):
                answer = client.post("/v1/greentrack/complete",
                                     json=native(source + line, max_tokens=6, uri=f"file:///{dev}.py"))
                assert answer.status_code == 200, answer.text
                cid = answer.json()["completion_id"]
                record = client.get(f"/v1/greentrack/completions/{cid}", params={"wait": 20}).json()
                assert record["energy_final"] is True, record
                records[dev].append(record)

    threads = [threading.Thread(target=developer, args=(dev,)) for dev in DEVELOPERS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert all(len(r) == 2 for r in records.values()), records
    homes = {}
    for dev, pair in records.items():
        meters = {r["meter"] for r in pair}
        assert len(meters) == 1, (dev, pair)  # both on the replica that served the developer first
        homes[dev] = meters.pop()
        assert all(r["total_j"] > 0 and r["method"] == "attributed" for r in pair), pair
    assert set(homes.values()) == {"replay:gpu0/steps", "replay:gpu1/steps"}, homes  # both replicas served
    assert service.replicas.served() == [4, 4]

    with _client(url, tokens[ADMIN]) as admin:
        exposed = admin.get("/metrics").text  # accounts and stores every replica's idle energy up to now
    families = {f.name: f for f in text_string_to_metric_families(exposed)}
    meter_j = sum(s.value for s in families["greentrack_meter_energy_joules"].samples)
    def read(store: Store) -> tuple[list[dict[str, Any]], list[tuple[float, str]]]:
        # through the server's own store: a second Store on the file in this process would drop its SQLite locks
        return ([dict(r) for r in store.completions()],
                [(float(e), str(m)) for e, m in store.conn.execute("SELECT energy_j, meter FROM idle_energy")])

    rows, idle = service.store.call(read)
    assert {m for _, m in idle} == {"replay:gpu0/steps", "replay:gpu1/steps"}
    for i, pipeline in enumerate(service.replicas.pipelines):
        meter = f"replay:gpu{i}/steps"
        assert pipeline.ledger is not None
        window_j = pipeline.ledger.totals().window_j  # this replica's counter delta over its ledger's window
        stored_j = math.fsum([r["total_j"] for r in rows if r["meter"] == meter] + [e for e, m in idle if m == meter])
        assert window_j > 0 and abs(stored_j - window_j) <= 1e-6 * window_j, (meter, stored_j, window_j)
    everything_j = math.fsum([r["total_j"] for r in rows] + [e for e, _ in idle])
    assert abs(everything_j - meter_j) <= 1e-6 * meter_j, (everything_j, meter_j)


def test_a_replica_without_its_own_calibration_takes_the_first_replicas(tmp_path: Any) -> None:
    """``greentrack calibrate`` measures the first visible GPU, so a second replica's device (``cuda:1``) has no stored
    calibration: it reads the first replica's (``open_replicas`` names it only when NVML says both GPUs are the same
    model); its own, once stored, comes first."""
    from greentrack.energy.calibration import Calibration
    from greentrack.pipeline import host_name, read_stored_calibration

    def calibration(device: str, j_per_prompt_token: float) -> dict[str, Any]:
        return Calibration(source_meter="nvml:gpu0", device=device, model="m", host=host_name(),
                           j_per_prompt_token=j_per_prompt_token, j_per_decode_token=0.2, prefill_w=400.0,
                           decode_w=250.0, idle_w=120.0, fit_error=0.05, n_points=6).to_dict()

    second = cast(Any, SimpleNamespace(device="cuda:1", model_id="m"))
    with Store(tmp_path / "c.db") as store:
        store.save_calibration(calibration("cuda:0", 0.003))
        assert read_stored_calibration(store, second) == (None, True)
        got, answered = read_stored_calibration(store, second, fallback_device="cuda:0")
        assert answered and got is not None and got.device == "cuda:0" and got.j_per_prompt_token == 0.003
        store.save_calibration(calibration("cuda:1", 0.004))
        got, _ = read_stored_calibration(store, second, fallback_device="cuda:0")
        assert got is not None and got.device == "cuda:1" and got.j_per_prompt_token == 0.004
