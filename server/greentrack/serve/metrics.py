"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own (no process-global state).

Place in the flow: the service calls ``observe_record`` when a completion's record is stored (energy known),
``observe_accept`` on acceptance, ``observe_idle`` for each idle period stored and ``observe_totals`` with the
meter's delta over the accounted window (``/metrics`` asks for it first); the app renders ``exposition()``.
Units are in the metric names (joules, seconds), as Prometheus' naming rules ask.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from greentrack.record import CompletionRecord
from greentrack.serve.idle import EnergyTotals, IdleEnergy

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Counters by developer, model and method; the idle energy; the queue's depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.completions = Counter("greentrack_completions", "Completions that reached the model.",
                                   ["developer", "model", "method", "outcome"], registry=r)
        self.prompt_tokens = Counter("greentrack_prompt_tokens", "Prompt tokens (reused ones included).",
                                     ["developer", "model"], registry=r)
        self.reused_prompt_tokens = Counter("greentrack_reused_prompt_tokens",
                                            "Prompt tokens served from the KV cache.", ["developer", "model"],
                                            registry=r)
        self.completion_tokens = Counter("greentrack_completion_tokens", "Generated tokens.",
                                         ["developer", "model"], registry=r)
        self.energy = Counter("greentrack_energy_joules", "Energy attributed to completions. Units: J.",
                              ["developer", "model", "method"], registry=r)
        self.accepted = Counter("greentrack_accepted", "Completions the developer accepted.",
                                ["developer", "model"], registry=r)
        self.idle_energy = Counter("greentrack_idle_energy_joules",
                                   "Energy measured while no completion ran. Units: J.", ["method"], registry=r)
        self.idle_time = Counter("greentrack_idle_seconds", "Time no completion's phases ran. Units: s.",
                                 registry=r)
        self.latency = Histogram("greentrack_latency_seconds", "Arrival to the suggestion (queue included).",
                                 ["model"], registry=r,
                                 buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0))
        self.queue_depth = Gauge("greentrack_queue_depth", "Completions waiting for the engine.", registry=r)
        self.running = Gauge("greentrack_running", "Completions holding an engine slot now.", registry=r)
        self.meter_energy = Gauge(
            "greentrack_meter_energy_joules",
            "The energy meter's delta since the server started, up to the last accounted instant; equals stored "
            "completions + stored idle energy once no completion is in flight. Units: J.", registry=r)
        self.accounted_time = Gauge("greentrack_accounted_seconds", "The window the meter's delta covers. Units: s.",
                                    registry=r)
        self.utilisation = Gauge("greentrack_utilisation",
                                 "Share of the accounted window in which a completion ran (1 - idle share).",
                                 registry=r)
        self.rejected = Counter("greentrack_http_errors", "Requests answered with an error, by status.",
                                ["status"], registry=r)

    def observe_record(self, record: CompletionRecord) -> None:
        dev, model = record.developer, record.model
        self.completions.labels(dev, model, record.method, record.outcome).inc()
        self.prompt_tokens.labels(dev, model).inc(record.prompt_tokens)
        self.reused_prompt_tokens.labels(dev, model).inc(record.reused_prompt_tokens)
        self.completion_tokens.labels(dev, model).inc(record.completion_tokens)
        self.energy.labels(dev, model, record.method).inc(max(0.0, record.total_j))
        self.latency.labels(model).observe(record.latency_ms / 1000.0)

    def observe_accept(self, developer: str, model: str) -> None:
        self.accepted.labels(developer, model).inc()

    def observe_idle(self, period: IdleEnergy) -> None:
        self.idle_energy.labels(period.method).inc(max(0.0, period.energy_j))
        self.idle_time.inc(max(0.0, period.idle_s))

    def observe_totals(self, totals: EnergyTotals) -> None:
        self.meter_energy.set(totals.meter_j)
        self.accounted_time.set(totals.window_s)
        if totals.window_s > 0:
            self.utilisation.set(max(0.0, min(1.0, 1.0 - totals.idle_s / totals.window_s)))

    def observe_error(self, status: int) -> None:
        self.rejected.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
