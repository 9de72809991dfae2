"""A database with known rows (written through the store's API) and the figures they must give.

Week 2026-W47 in Europe/Berlin (UTC+1): Monday 2026-11-16 00:00 local = 2026-11-15T23:00Z, to Monday 2026-11-23
00:00 local = 2026-11-22T23:00Z. Energies are exact binary fractions, so every sum is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greentrack.energy.calibration import Calibration
from greentrack.record import CompletionRecord
from greentrack.store import Store

ALICE = "alice@example.com"
BOB = "bob@example.com"


def rec(cid: str, ts: str, *, prefill_j: float, decode_j: float, **kw: Any) -> CompletionRecord:
    fields: dict[str, Any] = dict(
        completion_id=cid, uri="file:///w/a.py", language_id="python", model="m-big", backend="transformers",
        device="cpu", prompt_tokens=400, reused_prompt_tokens=0, completion_tokens=8, prefill_ms=20.0,
        decode_ms=30.0, latency_ms=50.0, prefill_j=prefill_j, decode_j=decode_j, total_j=prefill_j + decode_j,
        method="measured", meter="test", uncertainty_j=None, co2e_g=0.0, outcome="shown", ts=ts, developer=ALICE,
    )
    fields.update(kw)
    return CompletionRecord(**fields)


#: (record, accepted?) — alice's W47 rows r1–r6, one row just after the week (r7), her W46 rows (r8, r9), bob's.
ROWS: list[tuple[CompletionRecord, bool]] = [
    # Monday 16th, 09:00 local; another file, so no debounce gap; accepted
    (rec("r1", "2026-11-16T08:00:00Z", prefill_j=0.5, decode_j=1.5, uri="file:///w/b.py", prompt_tokens=600,
         reused_prompt_tokens=100, completion_tokens=10, latency_ms=100.0), True),
    # a.py: r2 starts 09:59:59.950Z; r3 starts 250 ms later (r2 superseded); r4 starts 400 ms after r3
    (rec("r2", "2026-11-16T10:00:00.000Z", prefill_j=0.25, decode_j=0.75, outcome="cancelled",
         completion_tokens=4), False),
    (rec("r3", "2026-11-16T10:00:00.250Z", prefill_j=0.25, decode_j=1.25, method="attributed"), False),
    (rec("r4", "2026-11-16T10:00:00.650Z", prefill_j=0.5, decode_j=2.5, method="attributed", prompt_tokens=1200,
         completion_tokens=20), True),
    # Wednesday 18th 23:30 local (22:30Z): an empty suggestion in TypeScript with the small model
    (rec("r5", "2026-11-18T22:30:00Z", prefill_j=0.125, decode_j=0.0, outcome="empty", language_id="typescript",
         model="m-small", method="estimated", prompt_tokens=300, completion_tokens=0, uri="file:///w/c.ts"), False),
    # Sunday 22nd 23:59 local (22:59Z): still W47
    (rec("r6", "2026-11-22T22:59:00Z", prefill_j=0.25, decode_j=0.0, outcome="error", model="m-small",
         method="estimated", prompt_tokens=100, completion_tokens=0, uri="file:///w/d.py"), False),
    # Monday 23rd 00:30 local (still the 22nd in UTC): W48, not in the report
    (rec("r7", "2026-11-22T23:30:00Z", prefill_j=8.0, decode_j=8.0, uri="file:///w/e.py"), True),
    # W46: Sunday 15th 23:30 local (22:30Z) and Tuesday 10th
    (rec("r8", "2026-11-15T22:30:00Z", prefill_j=0.25, decode_j=0.25, uri="file:///w/f.py"), False),
    (rec("r9", "2026-11-10T12:00:00Z", prefill_j=1.0, decode_j=3.0, uri="file:///w/g.py"), True),
    # bob: one suggestion this week, never accepted
    (rec("b1", "2026-11-17T09:00:00Z", prefill_j=0.25, decode_j=0.75, developer=BOB, uri="file:///w/z.rs",
         language_id="rust"), False),
]

def calibration(model: str, j_per_prompt_token: float, j_per_decode_token: float) -> dict[str, Any]:
    """A stored calibration document, as ``greentrack calibrate`` writes it (``Calibration.to_dict``)."""
    return Calibration(
        source_meter="test", device="cpu", model=model, host="h1", j_per_prompt_token=j_per_prompt_token,
        j_per_decode_token=j_per_decode_token, prefill_w=100.0, decode_w=80.0, idle_w=10.0, fit_error=0.0,
        n_points=0, created_ts="2026-11-01T00:00:00+00:00",
    ).to_dict()


CALIBRATIONS = [calibration("m-big", 0.001, 0.1), calibration("m-small", 0.0005, 0.05)]


def build_db(path: Path, rows: list[tuple[CompletionRecord, bool]] | None = None, *,
             calibrations: bool = True) -> Path:
    with Store(path) as store:
        for record, accepted in rows if rows is not None else ROWS:
            store.record(record)
            if accepted:
                store.mark_accepted(record.completion_id, "2026-11-20T12:00:00Z")
        if calibrations:
            for cal in CALIBRATIONS:
                store.save_calibration(cal)
    return path


EXPECTED_ALICE: dict[str, Any] = {
    "developer": ALICE,
    "week": "2026-W47",
    "from": "2026-11-16T00:00:00+01:00",
    "to": "2026-11-23T00:00:00+01:00",
    "tz": "Europe/Berlin",
    "completions": 6,
    "accepted": 2,
    "acceptance_rate": 0.3333,
    "energy_j": {"total": 7.875, "prefill": 1.875, "decode": 6.0, "wasted": 2.875,
                 # the rows carry neither an interval nor a bound (uncertainty_j None): no interval can be stated
                 "interval": {"low": None, "high": None, "coverage": None,
                              "basis": "unknown: 6 of 6 completions have neither an interval nor a bound"}},
    "j_per_completion": 1.3125,
    "j_per_accepted": 3.9375,
    # no completion attributed by engine step (transformers rows): no share of batched steps
    "batched_steps": {"completions": 0, "steps": 0, "batched": 0, "share": None, "mean_batch_size": None},
    "co2e_g": 0.000875,  # 7.875 J / 3.6e6 J/kWh * 400 g/kWh
    "carbon_intensity_g_per_kwh": 400.0,
    "method_share": {"measured": 0.381, "attributed": 0.5714, "estimated": 0.0476},
    "by_day": [
        {"date": "2026-11-16", "completions": 4, "accepted": 2, "energy_j": 7.5, "prefill_j": 1.5, "decode_j": 6.0},
        {"date": "2026-11-17", "completions": 0, "accepted": 0, "energy_j": 0.0, "prefill_j": 0.0, "decode_j": 0.0},
        {"date": "2026-11-18", "completions": 1, "accepted": 0, "energy_j": 0.125, "prefill_j": 0.125,
         "decode_j": 0.0},
        {"date": "2026-11-19", "completions": 0, "accepted": 0, "energy_j": 0.0, "prefill_j": 0.0, "decode_j": 0.0},
        {"date": "2026-11-20", "completions": 0, "accepted": 0, "energy_j": 0.0, "prefill_j": 0.0, "decode_j": 0.0},
        {"date": "2026-11-21", "completions": 0, "accepted": 0, "energy_j": 0.0, "prefill_j": 0.0, "decode_j": 0.0},
        {"date": "2026-11-22", "completions": 1, "accepted": 0, "energy_j": 0.25, "prefill_j": 0.25,
         "decode_j": 0.0},
    ],
    "by_model": [
        {"model": "m-big", "completions": 4, "accepted": 2, "energy_j": 7.5},
        {"model": "m-small", "completions": 2, "accepted": 0, "energy_j": 0.375},
    ],
    "by_language": [
        {"language_id": "python", "completions": 5, "accepted": 2, "energy_j": 7.75},
        {"language_id": "typescript", "completions": 1, "accepted": 0, "energy_j": 0.125},
    ],
    "by_outcome": [
        {"outcome": "shown", "completions": 3, "accepted": 2, "energy_j": 6.5},
        {"outcome": "empty", "completions": 1, "accepted": 0, "energy_j": 0.125},
        {"outcome": "cancelled", "completions": 1, "accepted": 0, "energy_j": 1.0},
        {"outcome": "error", "completions": 1, "accepted": 0, "energy_j": 0.25},
        {"outcome": "cached", "completions": 0, "accepted": 0, "energy_j": 0.0},
    ],
    "previous_week": {"week": "2026-W46", "completions": 2, "accepted": 1, "energy_j_total": 4.5},
    "tips": [
        "36.5% of this week's energy (2.88 J) went to 4 suggestion(s) never accepted (1 cancelled, 1 shown but "
        "not taken, 1 empty, 1 failed). A 500 ms debounce would have skipped at least 2 of them, saving ≈2.50 J "
        "(31.7% of the week) — assuming a request followed within that delay by another in the same file (start "
        "to start, start = ts − latency) was superseded by your typing.",
        "Prefill was 23.8% of the energy (1.88 J): 647 µJ per prompt token over 2900 computed prompt tokens "
        "(mean 483 per request). Capping the prompt at 256 tokens would have skipped 1520 of them (52.4%), "
        "≈983 mJ (12.5% of the week) — assuming prefill energy proportional to computed prompt tokens (attention "
        "grows faster than that), at the cost of the context the model no longer sees.",
        "m-small would have used ≈50.0% less energy than m-big on cpu for this week's 4 completion(s), ≈3.75 J "
        "(47.6% of the week) — pricing each power-of-two bin of prompt and output length with both models' stored "
        "calibrations (the binning of Fernandez et al., ACL 2025); assumes its suggestions would be accepted as "
        "often.",
        "Energy per accepted suggestion: 3.94 J, down 12.5% from 2026-W46 (4.50 J); total 7.88 J vs 4.50 J.",
    ],
}
