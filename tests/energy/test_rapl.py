"""RAPL on a prepared sysfs folder: domains, wraparound, missing DRAM, permission denied, absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from greentrack.energy import rapl
from greentrack.energy.rapl import RaplCounter, probe_rapl
from greentrack.errors import MeterUnavailable

RANGE_UJ = 262143328850


def domain(path: Path, name: str, energy_uj: int, *, limit_uw: int | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{RANGE_UJ}\n")
    if limit_uw is not None:
        (path / "constraint_0_power_limit_uw").write_text(f"{limit_uw}\n")
        (path / "constraint_1_power_limit_uw").write_text(f"{int(limit_uw * 1.2)}\n")
    return path


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """Two sockets; socket 0 has core and dram subdomains, socket 1 has none; a psys domain overlaps all."""
    root = tmp_path / "powercap"
    p0 = domain(root / "intel-rapl:0", "package-0", 1_000_000, limit_uw=150_000_000)
    domain(p0 / "intel-rapl:0:0", "core", 500_000)
    domain(p0 / "intel-rapl:0:1", "dram", 2_000_000)
    domain(root / "intel-rapl:1", "package-1", 3_000_000, limit_uw=150_000_000)
    domain(root / "intel-rapl:2", "psys", 9_000_000)
    (root / "intel-rapl:0:0").symlink_to(p0 / "intel-rapl:0:0")  # the kernel also links subdomains at the top
    return root


def write(path: Path, uj: int) -> None:
    path.write_text(f"{uj}\n")


def test_packages_and_dram_summed_not_core_nor_psys(sysfs: Path) -> None:
    c = RaplCounter(sysfs)
    assert c.name == "rapl:package+dram"
    assert c.domain_names == ["package-0", "package-0/dram", "package-1"]
    assert c.max_power_w == pytest.approx(2 * 180.0 * 1.3)  # largest constraint per package, +30 % for DRAM
    assert c.read_j() == 0.0  # relative to the first read
    write(sysfs / "intel-rapl:0" / "energy_uj", 1_000_000 + 5_000_000)
    write(sysfs / "intel-rapl:0" / "intel-rapl:0:1" / "energy_uj", 2_000_000 + 1_000_000)
    write(sysfs / "intel-rapl:0" / "intel-rapl:0:0" / "energy_uj", 99_000_000)  # core: inside the package
    write(sysfs / "intel-rapl:2" / "energy_uj", 99_000_000)  # psys: ignored
    assert c.read_j() == pytest.approx(6.0)
    assert c.method == "attributed" and c.update_period_s == 0.001 and c.resolution_j == 1e-6
    assert probe_rapl(sysfs).available


def test_wraparound(sysfs: Path) -> None:
    pkg = sysfs / "intel-rapl:1" / "energy_uj"
    write(pkg, RANGE_UJ - 1_000_000)
    c = RaplCounter(sysfs)
    base = c.read_j()
    write(pkg, 2_000_000)  # wrapped: 1 J to the top, then 2 J
    assert c.read_j() - base == pytest.approx(3.0)
    write(pkg, 2_500_000)
    assert c.read_j() - base == pytest.approx(3.5)


def test_missing_dram_domain(tmp_path: Path) -> None:
    domain(tmp_path / "intel-rapl:0", "package-0", 10)
    c = RaplCounter(tmp_path)
    assert c.name == "rapl:package" and c.domain_names == ["package-0"]
    assert c.max_power_w is None  # no constraint files: no ceiling known


def test_permission_denied_explains_the_fix(sysfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = rapl._read_sysfs

    def kernel(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "_read_sysfs", kernel)
    with pytest.raises(MeterUnavailable) as info:
        RaplCounter(sysfs)
    msg = str(info.value)
    assert "root only" in msg and "CVE-2020-8694" in msg and "chmod o+r" in msg and "udev" in msg
    assert isinstance(info.value.__cause__, PermissionError)
    assert probe_rapl(sysfs).available is False


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_by_file_mode(sysfs: Path) -> None:
    (sysfs / "intel-rapl:0" / "energy_uj").chmod(0o000)
    with pytest.raises(MeterUnavailable, match="CVE-2020-8694"):
        RaplCounter(sysfs)


def test_absent(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match=r"intel-rapl: RAPL is not exposed \(typical in VMs\)"):
        RaplCounter(tmp_path / "nothing")
    with pytest.raises(MeterUnavailable, match="RAPL is not exposed"):
        RaplCounter(tmp_path)
    status = probe_rapl(tmp_path)
    assert status.available is False and "typical in VMs" in status.reason


def test_only_psys(tmp_path: Path) -> None:
    domain(tmp_path / "intel-rapl:0", "psys", 10)
    with pytest.raises(MeterUnavailable, match="no package domain"):
        RaplCounter(tmp_path)


def test_counter_fails_cleanly_when_a_file_vanishes(sysfs: Path) -> None:
    c = RaplCounter(sysfs)
    (sysfs / "intel-rapl:1" / "energy_uj").unlink()
    with pytest.raises(MeterUnavailable, match="cannot read"):
        c.read_j()
