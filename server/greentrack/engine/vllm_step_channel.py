"""The channel that brings engine step records from vLLM's engine-core process to the server.

Place in the flow: with ``greentrack serve --engine-process`` vLLM's engine core runs in its own process (vLLM's
``VLLM_ENABLE_V1_MULTIPROCESSING`` layout), where ``vllm_step_scheduler.Recording*Scheduler`` makes the step
records the in-process ``vllm_steps.StepRecorder`` makes otherwise. ``StepChannel`` is the server's end: a Unix
socket in a private temporary folder (``multiprocessing.connection``: framed messages, authenticated with a random
key), whose address and key the engine process finds in its environment (``ADDRESS_ENV``, ``AUTHKEY_ENV``, set
before vLLM starts it). ``RemoteStepRecorder`` is the engine thread's ``StepRecorder`` for that layout: its
per-step calls do nothing (the engine process times the steps), and a receiver thread hands each message to the
sink (``energy.step_ledger.StepLedger``), with the engine's request ids mapped to ours.

Messages (tuples, in order on one connection; times on ``time.monotonic()``, CLOCK_MONOTONIC, one clock for every
process on Linux):

- ``("hello", pid)``: the recording scheduler is in place.
- ``("busy", t_s)``: the engine starts running steps at ``t_s``.
- ``("step", start_s, end_s, {engine id: (prefill tokens, decode tokens, context tokens)})``: one batch whose
  output came back; contiguous with the previous record while busy.
- ``("done", [engine ids])``: those requests are in no later step.
- ``("idle", t_s)``: no step runs from ``t_s`` until the next ``busy``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from greentrack.energy.step_attribution import RequestWork, StepRecord
from greentrack.engine.vllm_steps import StepRecorder

log = logging.getLogger(__name__)

ADDRESS_ENV = "GREENTRACK_STEP_ADDRESS"
AUTHKEY_ENV = "GREENTRACK_STEP_AUTHKEY"

#: A step's requests as sent: engine id → (prefill tokens, decode tokens, context tokens before the step).
WireWork = dict[str, tuple[int, int, int]]


def connect_from_env() -> Connection | None:
    """The engine process's end (None when the server asked for no records, or the server is not there)."""
    address = os.environ.get(ADDRESS_ENV, "")
    key = os.environ.get(AUTHKEY_ENV, "")
    if not address or not key:
        return None
    try:
        conn = Client(address, family="AF_UNIX", authkey=bytes.fromhex(key))
        conn.send(("hello", os.getpid()))
    except Exception as e:  # never keep vLLM's engine from starting for the energy figures
        log.warning("greentrack: engine steps not sent (cannot reach %s: %s)", address, e)
        return None
    return conn


#: The channel's private folder in the temporary directory: ``greentrack-steps-<server pid>-<random>``.
FOLDER_PREFIX = "greentrack-steps-"


def remove_stale_folders(temp_dir: str | None = None) -> list[str]:
    """Remove this user's channel folders whose server process is gone (one killed with SIGKILL could not remove
    its own); returns them. A folder whose pid is alive (or reused) is left alone."""
    root = temp_dir or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        pid_text = name[len(FOLDER_PREFIX):].split("-", 1)[0] if name.startswith(FOLDER_PREFIX) else ""
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:  # not ours to signal (another user's pid): alive
            continue
    return removed


class StepChannel:
    """Listens for the engine process. ``env`` is what that process needs in its environment."""

    def __init__(self) -> None:
        remove_stale_folders()
        # 0700: only this user reaches the socket
        self._folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
        self.address = os.path.join(self._folder, "steps.sock")
        self._key = secrets.token_bytes(32)
        self._listener = Listener(self.address, family="AF_UNIX", authkey=self._key)
        self.env = {ADDRESS_ENV: self.address, AUTHKEY_ENV: self._key.hex()}

    def accept(self) -> Connection:
        """Block until the engine process connects (``OSError`` once closed)."""
        return self._listener.accept()

    def close(self) -> None:
        try:
            self._listener.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class RemoteStepRecorder(StepRecorder):
    """The engine thread's recorder when the engine core runs in its own process: records come over ``channel``."""

    def __init__(self, channel: StepChannel) -> None:
        super().__init__()
        self.reason = "the engine process has not connected"
        self._channel = channel
        self._hello = threading.Event()
        self._closed = False
        #: messages handled (tests wait on it)
        self.sink_calls = 0
        self._receiver = threading.Thread(target=self._receive, name="greentrack-vllm-steps", daemon=True)
        self._receiver.start()

    def install(self, engine: Any) -> bool:
        """True once the engine process's recording scheduler has said hello (it connects while the engine is built,
        so this waits only for the message in flight)."""
        if not self._hello.wait(timeout=10.0):
            self.reason = "the engine process did not connect its step records (is its scheduler ours?)"
            return False
        self.installed = True
        self.reason = ""
        return True

    def close(self) -> None:
        """Stop listening (the receiver's end of a closing engine process is then expected, not warned of)."""
        self._closed = True
        self._channel.close()

    # -- the engine thread's calls: the engine process times the steps and reports the finished requests ------------
    def expect(self, request_id: str) -> None:
        with self._lock:
            self._expected.add(request_id)

    def withdraw(self, request_id: str) -> None:
        with self._lock:
            self._expected.discard(request_id)

    def begin_step(self) -> None:
        return None

    def end_step(self) -> None:
        return None

    def in_flight(self) -> int:
        return 0

    def request_finished(self, request_id: str) -> None:
        return None

    def idle(self) -> None:
        return None

    # -- the receiver thread ----------------------------------------------------------------------------------------
    def _receive(self) -> None:
        while not self._closed:
            try:
                conn = self._channel.accept()
            except OSError:
                return  # closed
            except Exception as e:  # a peer with the wrong key, a broken handshake: keep listening
                log.warning("engine step channel: connection refused (%s)", e)
                continue
            with conn:
                self._serve(conn)

    def _serve(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                if not self._closed:
                    log.warning("the engine process closed its step records")
                return
            try:
                self._handle(message)
            except Exception as e:  # never let one bad message stop the records
                log.warning("engine step message not understood (%s): %r", e, message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "hello":
            self._hello.set()
            return
        handlers: dict[str, Callable[..., None]] = {"busy": self._busy, "step": self._step, "done": self._done,
                                                    "idle": self._idle}
        handler = handlers.get(kind)
        if handler is None:
            raise ValueError(f"unknown kind {kind!r}")
        with self._lock:
            self.sink_calls += 1
            handler(*message[1:])

    # each with the lock held
    def _busy(self, t_s: float) -> None:
        if self.sink is not None:
            self.sink.engine_busy(float(t_s))
            self._sink_busy = True

    def _step(self, start_s: float, end_s: float, wire: WireWork) -> None:
        self.steps += 1
        if self.sink is not None and self._sink_busy:
            self.sink.add_step(StepRecord(float(start_s), float(end_s), self._work(wire)))

    def _done(self, engine_ids: list[str]) -> None:
        for sid in engine_ids:
            ours = self.our_id(str(sid))
            if self.sink is not None and self._sink_busy:
                self.sink.request_done(ours)
            self._ids.pop(str(sid), None)
            self._expected.discard(ours)

    def _idle(self, t_s: float) -> None:
        if self.sink is not None and self._sink_busy:
            self.sink.engine_idle(float(t_s))
        self._sink_busy = False

    def _work(self, wire: WireWork) -> dict[str, RequestWork]:
        return {self.our_id(sid): RequestWork(prefill_tokens=int(p), decode_tokens=int(d), context_tokens=int(c))
                for sid, (p, d, c) in wire.items()}

