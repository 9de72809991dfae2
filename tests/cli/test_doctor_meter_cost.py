"""``greentrack doctor`` states what the energy meter costs to run (issue 13), in its JSON and its text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _doctor(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GREENTRACK_DB": str(tmp_path / "d.db"), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "greentrack", "doctor", "--skip-model", "--db",
                           str(tmp_path / "d.db"), *extra], capture_output=True, text=True, env=env, timeout=120)


def test_doctor_states_the_meter_cost(tmp_path: Path) -> None:
    result = _doctor(tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    cost = json.loads(result.stdout)["meter_cost"]
    # This machine has neither NVML nor RAPL: the CPU-time estimate, read in µs.
    assert cost["meter"].startswith(("estimate:", "rapl:", "nvml:"))
    assert 0.0 < cost["read_cost_ms"] < 50.0
    assert cost["idle_core_pct"] < 0.5 and cost["idle_core_pct"] < cost["always_core_pct"]
    assert cost["idle_cpu_s_per_hour"] == round(3600 * cost["read_cost_ms"] / 1000 / 5.0, 3)
    text = _doctor(tmp_path)
    assert text.returncode == 0, text.stderr
    assert "sampling on demand costs" in text.stdout and "while idle" in text.stdout
