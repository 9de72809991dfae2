"""The step channel between vLLM's engine process and the server, on a real Unix socket (no vLLM needed): the
engine side's messages reach the sink in order with the engine's ids mapped to ours, a peer with the wrong key is
turned away without stopping the records, and a message the server does not understand is logged and skipped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from greentrack.energy.step_attribution import StepRecord
from greentrack.engine.vllm_step_channel import (
    ADDRESS_ENV,
    AUTHKEY_ENV,
    FOLDER_PREFIX,
    RemoteStepRecorder,
    StepChannel,
    connect_from_env,
    remove_stale_folders,
)


class Sink:
    """Keeps what the recorder hands over, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def engine_busy(self, at_s: float | None = None) -> float:
        self.events.append(("busy", at_s))
        return at_s if at_s is not None else time.monotonic()

    def add_step(self, step: StepRecord) -> None:
        work = {rid: (w.prefill_tokens, w.decode_tokens, w.context_tokens) for rid, w in step.requests.items()}
        self.events.append(("step", step.start_s, step.end_s, work))

    def request_done(self, request_id: str) -> None:
        self.events.append(("done", request_id))

    def engine_idle(self, since_s: float) -> None:
        self.events.append(("idle", since_s))


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteStepRecorder]:
    channel = StepChannel()
    for key, value in channel.env.items():
        monkeypatch.setenv(key, value)
    rec = RemoteStepRecorder(channel)
    try:
        yield rec
    finally:
        rec.close()


def test_the_engine_sides_records_reach_the_sink_in_order_with_our_ids(recorder: RemoteStepRecorder) -> None:
    sink = Sink()
    recorder.attach(sink)
    recorder.expect("req-a#1")  # vLLM 0.32 schedules it as "req-a#1-<8 characters>"
    conn = connect_from_env()
    assert conn is not None
    assert recorder.install(engine=None) and recorder.reason == ""
    conn.send(("busy", 10.0))
    conn.send(("step", 10.0, 10.02, {"req-a#1-1a2b3c4d": (30, 0, 0)}))
    conn.send(("step", 10.02, 10.03, {"req-a#1-1a2b3c4d": (0, 1, 30)}))
    conn.send(("done", ["req-a#1-1a2b3c4d"]))
    conn.send(("idle", 10.03))
    wait_for(lambda: recorder.sink_calls == 5)
    assert sink.events == [
        ("busy", 10.0),
        ("step", 10.0, 10.02, {"req-a#1": (30, 0, 0)}),
        ("step", 10.02, 10.03, {"req-a#1": (0, 1, 30)}),
        ("done", "req-a#1"),
        ("idle", 10.03),
    ]
    assert recorder.steps == 2
    # the engine thread's own calls do nothing in this layout: the engine process times the steps
    recorder.begin_step()
    recorder.end_step()
    recorder.idle()
    assert recorder.in_flight() == 0 and len(sink.events) == 5
    conn.close()


def test_records_of_a_busy_period_the_sink_did_not_see_begin_are_not_given_to_it(
        recorder: RemoteStepRecorder) -> None:
    """A sink attached mid-way gets nothing until the next busy period (its accounts start there)."""
    conn = connect_from_env()
    assert conn is not None
    conn.send(("busy", 1.0))
    wait_for(lambda: recorder.sink_calls == 1)
    sink = Sink()
    recorder.attach(sink)
    conn.send(("step", 1.0, 1.1, {"x": (5, 0, 0)}))
    conn.send(("idle", 1.1))
    conn.send(("busy", 2.0))
    conn.send(("step", 2.0, 2.1, {"y": (5, 0, 0)}))
    wait_for(lambda: recorder.sink_calls == 5)
    assert sink.events == [("busy", 2.0), ("step", 2.0, 2.1, {"y": (5, 0, 0)})]
    conn.close()


def test_a_peer_with_the_wrong_key_is_turned_away_and_a_bad_message_skipped(
        recorder: RemoteStepRecorder, caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    recorder.attach(sink)
    address = recorder._channel.address
    with pytest.raises(AuthenticationError):
        Client(address, family="AF_UNIX", authkey=b"not the key")
    with caplog.at_level(logging.WARNING, logger="greentrack.engine.vllm_step_channel"):
        conn = connect_from_env()  # the right key still gets in after the refusal
        assert conn is not None
        conn.send(("launch", 1))
        conn.send(("busy", 3.0))
        wait_for(lambda: recorder.sink_calls == 1)
    assert sink.events == [("busy", 3.0)]
    assert any("not understood" in r.getMessage() for r in caplog.records)
    assert any("refused" in r.getMessage() for r in caplog.records)
    conn.close()


def test_without_the_environment_the_engine_side_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    monkeypatch.delenv(AUTHKEY_ENV, raising=False)
    assert connect_from_env() is None
    monkeypatch.setenv(ADDRESS_ENV, "/nonexistent/greentrack/steps.sock")
    monkeypatch.setenv(AUTHKEY_ENV, "00")
    assert connect_from_env() is None  # a server that is gone: a warning, and the engine starts anyway


def test_a_killed_servers_folder_is_removed_by_the_next_one_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A server killed with SIGKILL cannot remove its 0700 socket folder; the next channel removes this user's folders
    whose server process is gone, and leaves a live server's (here: this process's, and its own) alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)  # exited: no process has this pid now (unless reused, then the folder stays)
    stale = tmp_path / f"{FOLDER_PREFIX}{dead_pid}-abc123"
    stale.mkdir(mode=0o700)
    (stale / "steps.sock").write_text("")
    live = tmp_path / f"{FOLDER_PREFIX}{os.getppid()}-def456"  # the process that started pytest: alive
    live.mkdir(mode=0o700)
    unrelated = tmp_path / "greentrack-steps-notapid"
    unrelated.mkdir()
    assert remove_stale_folders(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and unrelated.exists()
    channel = StepChannel()
    try:
        assert os.path.basename(os.path.dirname(channel.address)).startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
    finally:
        channel.close()
