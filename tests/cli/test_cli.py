"""The command line: every command has help; bad usage is one line and exit 2; domain errors exit 1, no traceback.

Runs the real ``greentrack`` entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command

from greentrack.cli import app

SHAPES = str(Path(__file__).resolve().parents[2] / "examples" / "shapes.py")
COMMANDS = ["lsp", "complete", "report", "doctor", "calibrate", "serve", "token", "bench"]


def greentrack(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greentrack", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_every_command_has_help_text() -> None:
    group = get_command(app)
    assert sorted(group.commands) == sorted(COMMANDS)  # type: ignore[attr-defined]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help and command.help.strip(), f"{name} has no help"
        for param in command.params:
            if param.name not in ("file",):
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_zero(command: str) -> None:
    result = greentrack(command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["complete", SHAPES, "--line", "999", "--col", "0"], "past the end of the file"),
        (["complete", SHAPES, "--line", "0", "--col", "999"], "past the end of line 0"),
        (["complete", "no/such/file.py", "--line", "0", "--col", "0"], "no such file"),
        (["complete", SHAPES, "--line", "0", "--col", "0", "--backend", "onnx"], "--backend"),
        (["complete", SHAPES, "--line", "abc", "--col", "0"], "--line"),
        (["complete", SHAPES, "--col", "0"], "--line"),
        # checked before the model loads: a missing model would be another error (exit 1)
        (["complete", SHAPES, "--line", "0", "--col", "0", "--max-tokens", "-5", "--model", "/no/model.gguf"],
         "--max-tokens"),
        (["nosuch"], "No such command"),
        (["report", "--developer", "a", "--all"], "exclude each other"),
        (["report", "--format", "pdf"], "--format"),
        (["calibrate", "--rounds", "0"], "--rounds"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = greentrack(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no box, no traceback


def test_report_before_anything_was_recorded_says_so(tmp_path: Path) -> None:
    default_db = Path(os.environ["GREENTRACK_DB"])  # conftest: a fresh folder, nothing recorded
    assert not default_db.exists()
    result = greentrack("report")
    assert result.returncode == 0, result.stderr
    assert "Nothing recorded yet" in result.stdout and str(default_db) in result.stdout
    as_json = greentrack("report", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["completions"] == 0 and "Nothing recorded yet" in as_json.stderr
    assert not default_db.exists()  # a report only reads
    named = greentrack("report", "--db", str(tmp_path / "typo.db"))
    assert named.returncode == 2 and "no database at" in named.stderr


def test_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    binary = tmp_path / "blob.py"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    result = greentrack("complete", str(binary), "--line", "0", "--col", "0")
    assert result.returncode == 1
    assert "binary" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = greentrack("complete", SHAPES, "--line", "16", "--col", "15", "--model",
                        str(tmp_path / "nothing.gguf"))
    assert result.returncode == 1
    assert "nothing.gguf" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_database_is_a_clear_error_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    result = greentrack("complete", SHAPES, "--line", "16", "--col", "15", "--db", str(db))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(db) in result.stderr
    assert db.read_bytes() == before


@pytest.mark.e2e
def test_complete_json_has_every_energy_field_and_is_logged(tmp_path: Path) -> None:
    from greentrack.record import ENERGY_FIELDS
    from greentrack.store import Store

    db = tmp_path / "cli.db"
    result = greentrack("complete", SHAPES, "--line", "16", "--col", "15", "--json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)
    assert set(ENERGY_FIELDS) | {"text"} <= set(fields)
    assert fields["total_j"] == pytest.approx(fields["prefill_j"] + fields["decode_j"])
    assert fields["method"] == "estimated"  # this machine has no energy counter
    assert fields["meter"].startswith("estimate")
    with Store(db) as store:
        (row,) = list(store.completions())
    assert row["completion_id"] == fields["completion_id"] and row["total_j"] == fields["total_j"]
    assert row.get("text") is None  # no source text stored without opt-in


@pytest.mark.e2e
def test_complete_table_shows_method_and_uncertainty(tmp_path: Path) -> None:
    result = greentrack("complete", SHAPES, "--line", "16", "--col", "15", "--db", str(tmp_path / "t.db"))
    assert result.returncode == 0, result.stderr
    assert "estimated" in result.stdout and "±" in result.stdout and "prefill" in result.stdout


def test_doctor_explains_every_meter(tmp_path: Path) -> None:
    result = greentrack("doctor", "--json", "--skip-model", "--db", str(tmp_path / "d.db"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    meters = {m["name"].split(":")[0]: m for m in data["meters"]}
    assert {"nvml", "rapl", "estimate"} <= set(meters)
    for meter in data["meters"]:
        assert meter["reason"], meter
    assert data["database"]["ok"] and data["database"]["schema_version"] >= 1
