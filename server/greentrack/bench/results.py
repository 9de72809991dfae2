"""The bench's figures: each configuration's records and replay summed into what the table, JSON and HTML show.

Place in the flow: after ``replay``, before ``render``. Pure: no model, no files. Units: J for energy, ms for
latency; shares are fractions in [0, 1]. Every energy figure carries its ``method`` (the least direct of its
records') and ``uncertainty_j`` (worst-case bounds add linearly; None when a record's is unknown).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from greentrack.bench.load_stats import percentile
from greentrack.bench.replay import ConfigRun

_METHOD_RANK = {"measured": 0, "attributed": 1, "estimated": 2}

#: Published findings the bench reproduces: (key, name, source, published reduction range, configuration).
FINDINGS: tuple[tuple[str, str, str, tuple[float, float], str], ...] = (
    ("babbling_suppression", "babbling suppression (stop rules)", "Solovyeva & Castor", (0.44, 0.89), "stop-rules"),
    ("inference_optimizations", "inference optimizations (KV/prefix reuse)", "Fernandez et al., ACL 2025",
     (0.0, 0.73), "kv-reuse"),
)
#: Goals of issue 14: all optimizations at most this share of the naive baseline's J per accepted suggestion,
#: and a keystroke-to-suggestion p50 at most this many ms.
GOAL_SHARE_OF_NAIVE = 0.10
GOAL_P50_MS = 500.0


def energy(total_j: float, uncertainty_j: float | None, method: str, meters: Sequence[str]) -> dict[str, Any]:
    return {"value_j": total_j, "uncertainty_j": uncertainty_j, "method": method, "meter": "+".join(meters)}


def _per(figure: dict[str, Any], count: int) -> dict[str, Any] | None:
    if count <= 0:
        return None
    u = figure["uncertainty_j"]
    return {**figure, "value_j": figure["value_j"] / count, "uncertainty_j": None if u is None else u / count}


def summarize_config(run: ConfigRun) -> dict[str, Any]:
    """One configuration's figures (``docs/interfaces.md``, "greentrack bench --json")."""
    records = run.records
    accepted_ids = set(run.accepted_ids)
    total_j = sum(float(r["total_j"]) for r in records)
    uncertainties = [r.get("uncertainty_j") for r in records]
    uncertainty_j = None if any(u is None for u in uncertainties) else float(sum(u or 0.0 for u in uncertainties))
    methods = [str(r["method"]) for r in records if float(r["total_j"]) > 0] or ["measured"]
    method = max(methods, key=lambda m: _METHOD_RANK.get(m, 3))
    meters = sorted({str(r["meter"]) for r in records})
    total = energy(total_j, uncertainty_j, method, meters)
    wasted = [r for r in records if r["completion_id"] not in accepted_ids]
    wasted_j = sum(float(r["total_j"]) for r in wasted)
    outcomes: Counter[str] = Counter(str(r["outcome"]) for r in records)
    outcome_j: dict[str, float] = {}
    for r in records:
        outcome_j[str(r["outcome"])] = outcome_j.get(str(r["outcome"]), 0.0) + float(r["total_j"])
    prompt = sum(int(r["prompt_tokens"]) for r in records)
    reused = sum(int(r["reused_prompt_tokens"]) for r in records)
    generated = sum(int(r["completion_tokens"]) for r in records)
    accepted = len(run.accepted_ids)
    return {
        "name": run.config.name,
        "description": run.config.describe(),
        "settings": {"debounce_ms": run.config.debounce_ms, "kv_reuse": run.config.reuse,
                     "stop_rules": run.config.stop_rules, "cache": run.config.cache, "model": run.config.model},
        "keystrokes": run.keystrokes,
        "tabs": run.tabs,
        "requests": run.requests,
        "superseded_before_model": run.superseded_before_model,
        "completions": len(records),
        "by_outcome": {o: {"completions": n, "energy_j": outcome_j[o]} for o, n in sorted(outcomes.items())},
        "stop_reasons": dict(sorted(run.stop_reasons.items())),
        "shown": run.shown,
        "accepted": accepted,
        "acceptance_rate": accepted / run.shown if run.shown else None,
        "typed_chars": run.typed_chars,
        "accepted_chars": accepted_chars_share(run),
        "energy": total,
        "j_per_accepted": _per(total, accepted),
        "j_per_completion": _per(total, len(records)),
        "j_per_generated_token": _per(total, generated),
        "wasted": {
            "energy_j": wasted_j,
            "share": wasted_j / total_j if total_j > 0 else None,
            "completions": len(wasted),
            "cancelled": outcomes.get("cancelled", 0),
            "never_accepted": len(wasted) - outcomes.get("cancelled", 0),
        },
        "latency_ms": {**_percentiles(list(run.latency_by_id.values())), "model": _model_latency(run)},
        "tokens": {"prompt": prompt, "prompt_computed": prompt - reused, "prompt_reused": reused,
                   "generated": generated},
        "developer_time_s": run.virtual_s,
        "suggestions": run.shown_log,
    }


def _percentiles(latencies_ms: list[float]) -> dict[str, float | int | None]:
    return {"p50": percentile(latencies_ms, 50), "p95": percentile(latencies_ms, 95), "n": len(latencies_ms)}


def _model_latency(run: ConfigRun) -> dict[str, float | int | None]:
    """Keystroke → suggestion of the suggestions the model made (cache hits left out: they cost no model work)."""
    return _percentiles([e["latency_ms"] for e in run.shown_log if not e["cached"] and e["latency_ms"] is not None])


def accepted_chars_share(run: ConfigRun) -> dict[str, Any]:
    total = run.typed_chars + run.accepted_chars
    return {"chars": run.accepted_chars, "share": run.accepted_chars / total if total else None}


def _ratio(value: dict[str, Any] | None, base: dict[str, Any] | None) -> float | None:
    if value is None or base is None or base["value_j"] <= 0:
        return None
    return float(value["value_j"]) / float(base["value_j"])


def summarize(runs: Sequence[ConfigRun], meta: dict[str, Any]) -> dict[str, Any]:
    """The whole bench: per configuration, each against the naive baseline, the findings and the goals."""
    configs = [summarize_config(run) for run in runs]
    by_name = {c["name"]: c for c in configs}
    naive = by_name.get("naive")
    for c in configs:
        c["vs_naive"] = {
            "j_per_accepted": _ratio(c["j_per_accepted"], naive["j_per_accepted"]) if naive else None,
            "energy": _ratio(c["energy"], naive["energy"]) if naive else None,
        }
    findings = []
    for key, name, source, (low, high), config_name in FINDINGS:
        found = by_name.get(config_name)
        ratio = found["vs_naive"]["energy"] if found else None
        per_accepted = found["vs_naive"]["j_per_accepted"] if found else None
        reduction = None if ratio is None else 1.0 - ratio
        findings.append({
            "key": key, "name": name, "source": source, "published_reduction": {"low": low, "high": high},
            "configuration": config_name, "energy_reduction": reduction,
            "j_per_accepted_reduction": None if per_accepted is None else 1.0 - per_accepted,
            "reproduced": None if reduction is None else bool(reduction >= low if low > 0 else reduction > 0),
        })
    goals = []
    everything = by_name.get("all")
    if everything is not None:
        share = everything["vs_naive"]["j_per_accepted"]
        goals.append({"goal": "all optimizations: J per accepted suggestion ≤ 10 % of the naive baseline's",
                      "value": share, "limit": GOAL_SHARE_OF_NAIVE,
                      "met": None if share is None else share <= GOAL_SHARE_OF_NAIVE,
                      "note": _share_note(naive, everything, share)})
        p50 = everything["latency_ms"]["p50"]
        goals.append({"goal": "all optimizations: keystroke → suggestion p50 ≤ 500 ms", "value": p50,
                      "limit": GOAL_P50_MS, "met": None if p50 is None else p50 <= GOAL_P50_MS, "note": None})
    return {"meta": meta, "configurations": configs, "findings": findings, "goals": goals}


def _share_note(naive: dict[str, Any] | None, everything: dict[str, Any], share: float | None) -> str | None:
    """How many acceptances the J-per-accepted goal rests on; where it has no value, why, and the bound that the same
    typing still gives."""
    if naive is None:
        return None
    if share is not None:
        return (f"on {naive['accepted']} accepted of {naive['shown']} shown in the naive baseline, "
                f"{everything['accepted']} of {everything['shown']} with all optimizations")
    if everything["accepted"] == 0:
        return (f"nothing accepted with all optimizations ({everything['shown']} shown): "
                "its J per accepted suggestion is undefined")
    used = everything["vs_naive"]["energy"]
    bound = everything["j_per_accepted"]["value_j"] / naive["energy"]["value_j"] if naive["energy"]["value_j"] else None
    return (f"the naive baseline had no suggestion accepted ({naive['shown']} shown): its J per accepted suggestion "
            "is unbounded, more than all its energy"
            + ("" if bound is None else f"; all optimizations' J per accepted is {bound * 100:.1f} % of that bound")
            + ("" if used is None else f"; on the same typing all optimizations used {used * 100:.1f} % of its energy"))
