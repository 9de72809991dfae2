"""The GPU validation (``bench/gpu_validate_attribution.py``) as a pytest, marked ``gpu``; skipped without CUDA.

On the GPU machine: ``PYTHONPATH=server python -m pytest tests/gpu -m gpu -q`` (about 2 minutes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and an NVIDIA driver"),
]


def test_attribution_against_long_window_truth(tmp_path: Path) -> None:
    from bench.gpu_validate_attribution import main

    results = main(["--out", str(tmp_path), "--requests", "40", "--window-s", "2.0"])
    counter = results["counter"]
    assert 80 < counter["update_period_ms"]["median"] < 120
    for key, row in results["mixed_calibrated"].items():
        if key == "conservation_error_j":
            assert abs(row) < 1e-6
            continue
        # Every phase here lasts >= 10 ms; the goal is ±10 %, measured -11 % to +12 % (docs/benchmarks.md).
        assert abs(row["mean_error_pct"]) < 15, (key, row)
        assert row["within_uncertainty"] >= 0.95, (key, row)
    assert (tmp_path / "h100_trace.json").exists()
