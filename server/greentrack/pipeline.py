"""Where the stages meet: a request goes through the engine, its phases get energy, the store keeps it.

``Pipeline.run`` is the critical path (engine only: timestamps, no counter reads). ``Pipeline.finalize``
runs afterwards, off the critical path: it waits for the energy meter to cover the phases, builds the
``CompletionRecord`` and stores it. The language server and ``greentrack complete`` both use this module.

A backend that batches (vLLM: ``batches = True``) runs concurrent ``run`` calls together, without the pipeline's
lock; its results' energy comes from the step ledger (``energy.step_ledger``: every engine step's energy split
over the requests in it, the rest idle), not from each result's own spans, which overlap and would count a
shared step once per request. The transformers backend stays serialized. A backend's ``timed_by`` (vLLM:
``"vllm"``) says how it times phases; the interval's error model applies to engine-timed ones only.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from greentrack.config import Settings
from greentrack.energy.interval import TIMED_BY_ENGINE, completion_interval
from greentrack.energy.types import Method, PhaseEnergy, PhaseSpan
from greentrack.engine.types import CancelToken, CompletionBackend, CompletionRequest, EngineResult
from greentrack.errors import BadInput, GreentrackError, StoreError
from greentrack.record import CompletionRecord, Outcome, co2e_grams
from greentrack.suggestion_cache import SuggestionCache

if TYPE_CHECKING:
    from greentrack.energy.calibration import Calibration
    from greentrack.energy.monitor import EnergyMonitor
    from greentrack.energy.step_attribution import IdleWindow, RequestEnergy
    from greentrack.energy.step_ledger import StepLedger
    from greentrack.store import Store

log = logging.getLogger(__name__)

#: When phases carry different methods, a record takes the least direct one.
_METHOD_RANK: dict[Method, int] = {"measured": 0, "attributed": 1, "estimated": 2}
#: While the database has not answered, the stored calibration is asked for again at most this often (s).
CALIBRATION_RETRY_S = 5.0
#: Idle energy from the step ledger is stored in windows of at least this long (s); the rest at ``close``.
IDLE_WINDOW_S = 30.0
#: Appended to the meter's name on figures attributed by engine step (``docs/interfaces.md``).
STEPS_METER_SUFFIX = "/steps"
#: The ``meter`` of a suggestion served from the suggestion cache: no device work, 0 J ``measured`` ± 0.
CACHE_METER = "cache"


@dataclass(frozen=True)
class RequestContext:
    """What the record needs beyond the engine's result. ``received_s`` on ``time.monotonic()``.

    ``developer``: whom the completion belongs to when not the settings' developer (``greentrack serve``: the
    bearer token's owner).
    """

    uri: str
    language_id: str
    received_s: float
    developer: str = ""


def combine_phase_energy(
    result: EngineResult, energies: Sequence[PhaseEnergy], meter_name: str, fallback: Method
) -> tuple[float, float, Method, str, float | None]:
    """Sum per-phase figures into (prefill_j, decode_j, method, meter, uncertainty_j). Units: J.

    Uncertainties add linearly (the phases' errors share their cause, the counter's step timing, so they
    are not independent); None when any phase's uncertainty is unknown.
    """
    prefill_j = sum(e.energy_j for e in energies if e.kind == "prefill")
    decode_j = sum(e.energy_j for e in energies if e.kind == "decode")
    methods = [e.method for e in energies] or [fallback]
    method = max(methods, key=lambda m: _METHOD_RANK[m])
    meters = sorted({e.meter for e in energies}) or [meter_name]
    uncertainties = [e.uncertainty_j for e in energies]
    known = [u for u in uncertainties if u is not None]
    uncertainty = sum(known) if len(known) == len(uncertainties) else None
    return prefill_j, decode_j, method, "+".join(meters), uncertainty


def wall_clock_iso(monotonic_s: float) -> str:
    """A ``time.monotonic()`` instant as UTC ISO 8601: the row's ``ts`` is when the request arrived."""
    seconds_ago = max(0.0, time.monotonic() - monotonic_s)
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(timespec="microseconds")


def local_midnight_utc_iso() -> str:
    """The start of today in the local time zone, as UTC ISO 8601 (the rows' ``ts`` format)."""
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(UTC).isoformat(timespec="microseconds")


def outcome_of(result: EngineResult) -> Outcome:
    if result.cancelled:
        return "cancelled"
    if result.stop_reason == "error":
        return "error"
    if result.from_cache:
        return "cached"
    return "shown" if result.text else "empty"


def _duration_ms(span: PhaseSpan | None) -> float:
    return span.duration_s * 1000.0 if span else 0.0


class Pipeline:
    """One backend, one energy monitor, one store. Generations are serialized by ``run``, unless the backend
    batches (``batches``): then ``ledger`` attributes each engine step's energy to the requests in it.

    ``store_idle``: store the ledger's idle energy (``Store.record_idle``) in windows of ``IDLE_WINDOW_S``; off by
    default, for a caller that accounts idle time itself. ``on_idle`` is told of every idle window stored
    (``greentrack serve``'s metrics); ``store_idle_energy`` stores one now.
    """

    def __init__(
        self,
        settings: Settings,
        backend: CompletionBackend,
        monitor: EnergyMonitor,
        store: Store | None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.monitor = monitor
        self.store = store
        self._generation_lock = threading.Lock()
        self._finalizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greentrack-energy")
        #: The stored calibration is still to be read: the database did not answer when the pipeline opened.
        self.calibration_pending = False
        #: Whose calibration to use when none is stored for this backend's device (``read_stored_calibration``).
        self.calibration_device: str | None = None
        self._next_calibration_read_s = 0.0
        self.batches = bool(getattr(backend, "batches", False))
        #: How the backend times phases (``energy.interval``: the error model applies to engine-timed ones only).
        self.timed_by = str(getattr(backend, "timed_by", TIMED_BY_ENGINE))
        self.store_idle = False
        self.on_idle: Callable[[IdleWindow], None] | None = None
        self._idle_lock = threading.Lock()  # a window is taken and stored as one step (``store_idle_energy``)
        self.ledger: StepLedger | None = self._open_ledger() if self.batches else None
        #: What the user types into a suggestion still shown is served from here (None: off, by the
        #: ``suggestion_cache`` setting through ``use_suggestion_cache``, or in benchmarks' naive run).
        self.suggestion_cache: SuggestionCache | None = SuggestionCache()

    def _open_ledger(self) -> StepLedger | None:
        """The step ledger, attached to the backend; None (with a warning) where steps cannot be recorded."""
        from greentrack.energy.step_attribution import StepCosts
        from greentrack.energy.step_ledger import StepLedger

        attach = getattr(self.backend, "attach_step_sink", None)
        if self.monitor.counter is None or attach is None:
            why = "no counter" if self.monitor.counter is None else "the backend records no steps"
            log.info("batched requests are attributed by their own phases (%s)", why)
            return None
        ledger = StepLedger(self.monitor, StepCosts.from_calibration(self.monitor.calibration))
        reason = attach(ledger)
        if reason is not None:
            log.warning("engine steps cannot be recorded (%s): concurrent requests are attributed by their own "
                        "phases, which counts a shared step once per request", reason)
            return None
        return ledger

    # -- critical path ------------------------------------------------------------------------------
    def run(self, request: CompletionRequest, cancel: CancelToken) -> EngineResult:
        """Generate (one at a time, unless the backend batches). ``BadInput`` propagates (nothing reached the
        model); any other failure of the engine becomes an ``error`` result whose elapsed time is still measured.
        The suggestion cache is asked first: a hit is a result with no model work (``extras["cached_from"]``)."""
        cache = self.suggestion_cache  # read once: ``use_suggestion_cache`` may switch it from another thread
        cached = self._from_cache(cache, request, cancel)
        if cached is not None:
            return cached
        if self.batches:
            result = self._run(request, cancel)
        else:
            with self._generation_lock:
                result = self._run(request, cancel)
        if cache is not None and result.text and not result.cancelled and result.stop_reason != "error":
            cache.remember(request.request_id, request.document_key, request.text, request.offset, result.text)
        return result

    def use_suggestion_cache(self, on: bool) -> None:
        """The ``suggestion_cache`` setting: on keeps the cache (a new, empty one when it was off); off drops it and
        its suggestions. Takes effect from the next ``run``."""
        if not on:
            self.suggestion_cache = None
        elif self.suggestion_cache is None:
            self.suggestion_cache = SuggestionCache()

    @staticmethod
    def _from_cache(cache: SuggestionCache | None, request: CompletionRequest, cancel: CancelToken
                    ) -> EngineResult | None:
        """The rest of a suggestion shown here before, when what was typed since is a prefix of it (no engine)."""
        if cache is None:
            return None
        hit = cache.lookup(request.document_key, request.text, request.offset)
        if hit is None:
            return None
        now_s = time.monotonic()
        return EngineResult(
            request_id=request.request_id, text=hit.text, prompt_tokens=0, reused_prompt_tokens=0,
            completion_tokens=0, spans=[], started_s=now_s, ended_s=now_s, cancelled=cancel.cancelled,
            extras={"cached_from": hit.source_id},
        )

    def _run(self, request: CompletionRequest, cancel: CancelToken) -> EngineResult:
        started_s = time.monotonic()
        self.monitor.begin_work()  # the meter samples around work only (energy/sampler.py)
        try:
            return self.backend.complete(request, cancel)
        except BadInput:
            raise
        except Exception as e:  # the engine failed mid-way: the energy it spent is still logged
            ended_s = time.monotonic()
            log.error("completion %s failed in the engine: %s", request.request_id, e)
            return EngineResult(
                request_id=request.request_id, text="", prompt_tokens=0, reused_prompt_tokens=0,
                completion_tokens=0,
                spans=[PhaseSpan(request.request_id, "prefill", started_s, ended_s, 0.0)],
                started_s=started_s, ended_s=ended_s, stop_reason="error",
                extras={"error": str(e)},
            )
        finally:
            self.monitor.end_work()

    # -- after the suggestion is out ----------------------------------------------------------------
    def finalize(self, result: EngineResult, context: RequestContext) -> CompletionRecord:
        """Attribute energy to the result's phases, build the record, store it. Blocks up to ~0.5 s
        while the meter catches up with the phases' end."""
        energies, figure = self._phase_energy(result)
        prefill_j, decode_j, method, meter, uncertainty_j = combine_phase_energy(
            result, energies, self.monitor.meter_name, self.monitor.method
        )
        if result.from_cache:  # no device work was done: exactly 0 J (docs/interfaces.md)
            method, meter, uncertainty_j = "measured", CACHE_METER, 0.0
        total_j = prefill_j + decode_j
        interval = completion_interval(energies, result.spans, calibrated=self.monitor.calibration is not None,
                                       timed_by=self.timed_by)
        record = CompletionRecord(
            completion_id=result.request_id,
            uri=context.uri,
            language_id=context.language_id,
            model=self.backend.model_id,
            backend=self.backend.name,
            device=self.backend.device,
            prompt_tokens=result.prompt_tokens,
            reused_prompt_tokens=result.reused_prompt_tokens,
            completion_tokens=result.completion_tokens,
            prefill_ms=_duration_ms(result.span("prefill")),
            decode_ms=_duration_ms(result.span("decode")),
            latency_ms=max(0.0, (result.ended_s - context.received_s) * 1000.0),
            prefill_j=prefill_j,
            decode_j=decode_j,
            total_j=total_j,
            method=method,
            meter=meter,
            uncertainty_j=uncertainty_j,
            co2e_g=co2e_grams(total_j, self.settings.carbon_intensity),
            outcome=outcome_of(result),
            developer=context.developer or self.settings.developer,
            ts=wall_clock_iso(context.received_s),
            text=result.text if self.settings.store_text else None,
            interval_low_j=interval.low_j if interval else None,
            interval_high_j=interval.high_j if interval else None,
            interval_coverage=interval.coverage if interval else None,
            interval_basis=interval.basis if interval else None,
            steps=figure.steps if figure else None,
            batched_steps=figure.batched_steps if figure else None,
            mean_batch_size=figure.mean_batch_size if figure else None,
        )
        if self.store is not None:
            self.store.record(record)
            try:
                record.today_completions, record.today_j = self.store.totals_since(
                    developer=record.developer, since_ts=local_midnight_utc_iso()
                )
            except (GreentrackError, sqlite3.Error) as e:
                log.warning("cannot read today's total: %s", e)
            self._read_calibration_late()
        if self.ledger is not None and self.store_idle:
            self.store_idle_energy(min_window_s=IDLE_WINDOW_S)
        return record

    def _phase_energy(self, result: EngineResult) -> tuple[list[PhaseEnergy], RequestEnergy | None]:
        """The result's phases' energy: from the step ledger for a batched result (with its step figure: the
        steps it was in, those batched), else from its own spans (no step figure). A batched result with no span
        (cancelled or out of time during a chunked prefill, before its first token) still takes the figure of the
        steps it was in: the ledger holds their energy, which would otherwise be stored nowhere."""
        engine_id = result.extras.get("engine_request_id")
        ledger = self.ledger
        if ledger is not None and isinstance(engine_id, str) and (result.spans or ledger.has_steps(engine_id)):
            first_step_s = min((span.start_s for span in result.spans), default=None)
            figure = ledger.request_energy(engine_id, first_step_s=first_step_s)
            if figure is not None:
                meter = ledger.meter
                return figure.phases(replace(meter, name=meter.name + STEPS_METER_SUFFIX)), figure
            log.warning("no engine step recorded for %s: attributed by its own phases", result.request_id)
        return self.monitor.phase_energy(result.spans, timed_by=self.timed_by), None

    def take_idle_energy(self, *, min_window_s: float = 0.0) -> IdleWindow | None:
        """The step ledger's idle energy since the last take (None without a ledger or when too short)."""
        return self.ledger.take_idle(min_window_s=min_window_s) if self.ledger is not None else None

    def store_idle_energy(self, *, min_window_s: float = 0.0) -> IdleWindow | None:
        """Take the step ledger's idle energy since the last take and store it (``Store.record_idle``); the
        window, or None without a ledger or when shorter than ``min_window_s``."""
        with self._idle_lock:
            window = self.take_idle_energy(min_window_s=min_window_s)
            self._store_idle(window)
            return window

    def _store_idle(self, window: IdleWindow | None) -> None:
        if window is None or self.store is None:
            return
        try:
            self.store.record_idle(
                started_ts=wall_clock_iso(window.start_s), ended_ts=wall_clock_iso(window.end_s),
                energy_j=window.energy_j, method=self.monitor.method,
                meter=self.monitor.meter_name + STEPS_METER_SUFFIX, uncertainty_j=window.uncertainty_j,
                host=host_name(),
            )
        except (GreentrackError, sqlite3.Error, OSError) as e:
            log.warning("idle energy %.3f J not stored: %s", window.energy_j, e)
            return
        if self.on_idle is not None:
            self.on_idle(window)

    def _read_calibration_late(self) -> None:
        """Once the database answers, take the stored calibration that could not be read at start: the monitor
        is opened again with it (from the next completion on), as ``open_pipeline`` would have."""
        if not self.calibration_pending or self.store is None:
            return
        now = time.monotonic()
        if now < self._next_calibration_read_s:
            return
        self._next_calibration_read_s = now + CALIBRATION_RETRY_S
        calibration, answered = read_stored_calibration(self.store, self.backend,
                                                         fallback_device=self.calibration_device)
        if not answered:
            return
        self.calibration_pending = False
        if calibration is None:
            return
        from greentrack.energy.monitor import open_monitor

        try:
            monitor = open_monitor(self.backend.device, gpu_indices=_gpu_indices(self.backend.device),
                                   calibration=calibration, on_demand=True)
        except GreentrackError as e:
            log.warning("cannot use the stored calibration: %s", e)
            return
        old, self.monitor = self.monitor, monitor
        if self.ledger is not None:
            from greentrack.energy.step_attribution import StepCosts

            self.ledger.switch_monitor(monitor, StepCosts.from_calibration(calibration))
        old.close()
        log.info("stored calibration read now that the database answers; energy: %s", monitor.meter_name)

    def finalize_later(
        self,
        result: EngineResult,
        context: RequestContext,
        on_done: Callable[[CompletionRecord], None] | None = None,
    ) -> Future[CompletionRecord]:
        """``finalize`` on the pipeline's background thread; ``on_done`` runs there with the record."""

        def job() -> CompletionRecord:
            record = self.finalize(result, context)
            if on_done is not None:
                on_done(record)
            return record

        return self._finalizer.submit(job)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every record handed to ``finalize_later`` so far is stored."""
        self._finalizer.submit(lambda: None).result(timeout=timeout_s)

    def accept(self, completion_id: str) -> bool:
        """Mark a completion accepted (the ``greentrack.accept`` command). Waits for pending records."""
        self._finalizer.submit(lambda: None).result(timeout=10)
        if self.store is None:
            return False
        return self.store.mark_accepted(completion_id)

    def close(self, *, close_store: bool = True) -> None:
        """Store what is pending, release the engine and the meter; then the store, unless ``close_store`` is False
        (replicas of ``greentrack serve --data-parallel-size`` share one)."""
        self._finalizer.shutdown(wait=True)
        try:
            self.backend.close()
        except Exception as e:  # closing must never raise into the editor session
            log.warning("while closing: %s", e)
        if self.ledger is not None:
            try:
                self.ledger.flush()
                if self.store_idle:
                    self.store_idle_energy()
            except Exception as e:
                log.warning("while closing the step ledger: %s", e)
        try:
            self.monitor.close()
        except Exception as e:
            log.warning("while closing: %s", e)
        if self.store is not None and close_store:
            self.store.close()


def host_name() -> str:
    return socket.gethostname()


def open_store(settings: Settings) -> Store:
    from greentrack.store import Store

    return Store(settings.db_path)


def open_pipeline(
    settings: Settings,
    *,
    store: Store | None = None,
    strict_device: bool = False,
    backend_kwargs: dict[str, Any] | None = None,
    calibration_device: str | None = None,
) -> Pipeline:
    """Load the model, start the energy monitor (calibrated when a calibration exists), open the store.
    ``backend_kwargs`` go to the backend (``greentrack serve``: vLLM's parallel sizes). ``calibration_device``: whose
    stored calibration to use when none is stored for the backend's device (a replica on a GPU like the first's).

    Whatever the database's state (locked, read-only, on a full disk), the model loads and serves: rows spool
    and the calibration is read when the database answers (``Pipeline._read_calibration_late``).
    """
    from greentrack.energy.monitor import open_monitor
    from greentrack.engine.factory import open_backend

    if store is None:
        try:
            store = open_store(settings)  # opens whatever the file's state, unless it is not ours
        except OSError as e:
            raise StoreError(f"cannot open the database {settings.db_path}: {e}") from e
    backend = open_backend(settings, **(backend_kwargs or {}))
    calibration, answered = read_stored_calibration(store, backend, fallback_device=calibration_device)
    gpu_indices = _gpu_indices(backend.device)
    monitor = open_monitor(
        backend.device, gpu_indices=gpu_indices, calibration=calibration, strict=strict_device, on_demand=True
    )
    pipeline = Pipeline(settings, backend, monitor, store)
    pipeline.calibration_device = calibration_device
    pipeline.use_suggestion_cache(settings.suggestion_cache)
    pipeline.calibration_pending = not answered
    return pipeline


def read_stored_calibration(store: Store, backend: CompletionBackend, *, fallback_device: str | None = None
                            ) -> tuple[Calibration | None, bool]:
    """(the newest stored calibration of this host, device and model or None, whether the database answered).
    ``fallback_device``: when none is stored for the backend's device, that device's (said in the log).

    A database that does not answer (locked, unreadable) is no reason not to serve: the caller asks again later.
    A malformed calibration is ignored.
    """
    from greentrack.energy.calibration import Calibration

    try:
        stored = store.latest_calibration(host=host_name(), device=backend.device, model=backend.model_id)
        if not stored and fallback_device and fallback_device != backend.device:
            stored = store.latest_calibration(host=host_name(), device=fallback_device, model=backend.model_id)
            if stored:
                log.info("%s has no calibration of its own: using %s's (the same GPU model)", backend.device,
                         fallback_device)
    except (GreentrackError, sqlite3.Error) as e:
        log.warning("the stored calibration cannot be read now (%s); it will be read when the database answers", e)
        return None, False
    try:
        return (Calibration.from_dict(stored) if stored else None), True
    except (GreentrackError, KeyError, TypeError, ValueError) as e:
        log.warning("ignoring the stored calibration: %s", e)
        return None, True


def _gpu_indices(device: str) -> list[int] | None:
    if not device.startswith("cuda"):
        return None
    _, _, rest = device.partition(":")
    return [int(i) for i in rest.split(",") if i.strip().isdigit()] or [0]
