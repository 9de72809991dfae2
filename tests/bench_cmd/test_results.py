"""The bench's figures from a replay's records (pure: ``results.summarize`` and the lines ``render`` prints)."""

from __future__ import annotations

from typing import Any

from greentrack.bench.render import acceptance_lines, goal_lines
from greentrack.bench.replay import Config, ConfigRun
from greentrack.bench.results import summarize

NAIVE = Config("naive", 0, reuse=False, stop_rules=False, cache=False)
ALL = Config("all", 150, reuse=True, stop_rules=True, cache=True)


def record(completion_id: str, total_j: float, outcome: str = "shown") -> dict[str, Any]:
    return {"completion_id": completion_id, "total_j": total_j, "uncertainty_j": total_j / 2, "method": "estimated",
            "meter": "estimate", "outcome": outcome, "prompt_tokens": 100, "reused_prompt_tokens": 0,
            "completion_tokens": 4}


def run_of(config: Config, energies_j: list[float], accepted: int, shown: int) -> ConfigRun:
    run = ConfigRun(config, shown=shown, latency_by_id={f"{config.name}-shown-{i}": 400.0 for i in range(shown)})
    run.records = [record(f"{config.name}-{i}", j) for i, j in enumerate(energies_j)]
    run.accepted_ids = [f"{config.name}-{i}" for i in range(accepted)]
    return run


def goal(summary: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = summary["goals"][0]
    return first


def test_nothing_accepted_in_the_naive_baseline_is_said_plainly_with_the_bound_it_gives() -> None:
    summary = summarize([run_of(NAIVE, [100.0, 100.0], 0, 1), run_of(ALL, [5.0, 5.0], 1, 4)], {})
    assert goal(summary)["value"] is None and goal(summary)["met"] is None
    note = goal(summary)["note"]
    assert "unbounded" in note and "5.0 % of that bound" in note and "5.0 % of its energy" in note
    assert acceptance_lines(summary) == ["nothing accepted in naive (1 shown): J per accepted suggestion undefined (—)"]
    assert "not measured" in goal_lines(summary)[0]


def test_the_goal_names_the_acceptances_it_rests_on() -> None:
    summary = summarize([run_of(NAIVE, [100.0, 100.0], 1, 4), run_of(ALL, [5.0, 5.0], 2, 8)], {})
    assert goal(summary)["value"] == 5.0 / 200.0 and goal(summary)["met"] is True
    assert goal(summary)["note"] == "on 1 accepted of 4 shown in the naive baseline, 2 of 8 with all optimizations"
    assert acceptance_lines(summary) == []
    summary = summarize([run_of(NAIVE, [100.0], 0, 0), run_of(ALL, [5.0], 0, 3)], {})
    assert "nothing accepted with all optimizations (3 shown)" in goal(summary)["note"]
