"""``CompletionRecord``: one completion request that reached the model, as the store keeps it.

Its fields are the ``greentrack/energy`` notification of ``docs/interfaces.md`` plus ``ts``, ``developer``,
``accepted`` and ``accepted_ts``. The pipeline fills it; the store writes it; the LSP sends ``energy_fields()``.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from greentrack.energy.types import Method

Outcome = Literal["shown", "empty", "cancelled", "error", "cached"]

#: The fields of the ``greentrack/energy`` notification, in contract order.
ENERGY_FIELDS: tuple[str, ...] = (
    "completion_id", "uri", "language_id", "model", "backend", "device",
    "prompt_tokens", "reused_prompt_tokens", "completion_tokens",
    "prefill_ms", "decode_ms", "latency_ms",
    "prefill_j", "decode_j", "total_j",
    "method", "meter", "uncertainty_j",
    "co2e_g", "outcome",
    "interval_low_j", "interval_high_j", "interval_coverage", "interval_basis",
)


#: Field metadata of values the record carries to the client but the store does not keep.
NOT_STORED = {"stored": False}


def is_stored(f: Field[Any]) -> bool:
    return f.metadata.get("stored", True) is not False


def utc_now_iso() -> str:
    """The current time, UTC, ISO 8601 with microseconds and an explicit offset."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def co2e_grams(energy_j: float, intensity_g_per_kwh: float) -> float:
    """Grams CO2e for an energy. Units: J in, gCO2e/kWh intensity; 1 kWh = 3.6e6 J."""
    return energy_j / 3.6e6 * intensity_g_per_kwh


@dataclass
class CompletionRecord:
    """One completion. Units: ms for times, J for energy, g for CO2e."""

    completion_id: str
    uri: str
    language_id: str
    model: str
    backend: str
    device: str
    prompt_tokens: int
    reused_prompt_tokens: int
    completion_tokens: int
    prefill_ms: float
    decode_ms: float
    latency_ms: float
    prefill_j: float
    decode_j: float
    total_j: float
    method: Method
    meter: str
    uncertainty_j: float | None
    co2e_g: float
    outcome: Outcome
    ts: str = field(default_factory=utc_now_iso)
    developer: str = ""
    accepted: int = 0
    accepted_ts: str | None = None
    #: Not stored: this developer's completions and energy (J) today, local time, sent with the notification.
    today_completions: int | None = field(default=None, metadata=NOT_STORED)
    today_j: float | None = field(default=None, metadata=NOT_STORED)
    #: Only filled when the user opted in to storing source text (``GREENTRACK_STORE_TEXT=1``).
    text: str | None = None
    #: The server's URL for a completion an editor got from a remote ``greentrack serve`` and mirrored into its
    #: local database; None for a completion made in this process.
    served_by: str | None = None
    #: Where the true ``total_j`` lies for a share ``interval_coverage`` of completions (0.9), or, where
    #: ``interval_coverage`` is None, the worst-case bound or a model's range; ``interval_basis`` says which
    #: (``energy/interval.py``). ``uncertainty_j`` stays the worst-case bound. Units: J.
    interval_low_j: float | None = None
    interval_high_j: float | None = None
    interval_coverage: float | None = None
    interval_basis: str | None = None
    #: For a completion attributed by engine step (vLLM's step ledger), the engine steps it was in, how many of
    #: them it shared with at least one other request, and how many requests its steps held on average (itself
    #: included); None where it was not (the transformers backend, a cached suggestion). Units: steps, requests.
    steps: int | None = None
    batched_steps: int | None = None
    mean_batch_size: float | None = None

    def energy_fields(self) -> dict[str, Any]:
        """The ``greentrack/energy`` notification's params."""
        row = asdict(self)
        fields = {name: row[name] for name in ENERGY_FIELDS}
        if self.today_j is not None:
            fields.update(today_j=self.today_j, today_completions=self.today_completions)
        return fields

    def row(self) -> dict[str, Any]:
        """Everything the store keeps."""
        return {f.name: getattr(self, f.name) for f in fields(self) if is_stored(f)}
