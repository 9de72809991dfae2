"""Intel/AMD CPUs: RAPL energy counters under ``/sys/class/powercap/intel-rapl:*`` (Linux powercap).

Flow: ``open_monitor("cpu")`` builds a ``RaplCounter``; only the sampler thread reads it.

What it reads: every package domain (``intel-rapl:N`` whose ``name`` starts with ``package``) and, where
present, its ``dram`` subdomain (``intel-rapl:N:M`` named ``dram``: DRAM is outside the package's figure).
Core/uncore subdomains are inside the package figure and ``psys`` overlaps everything, so neither is added.

Caveats:

* ``energy_uj`` wraps at ``max_energy_range_uj`` (every ~1 h at 65 W for a 2^38 µJ range): each domain keeps
  its last raw value and adds the wrapped delta. The sampler reads far more often than any wrap period.
* Since November 2020 (CVE-2020-8694, "Platypus": energy readings leak secrets) the kernel makes
  ``energy_uj`` readable by root only; ``sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj`` (lost at
  reboot) or a udev rule restores it. The error says so.
* Most VMs expose no RAPL at all.
* The value updates every ~1 ms and is computed at the read: a near-continuous counter.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from greentrack.energy.counter import Counter, MeterStatus, measure_read_cost_s
from greentrack.errors import MeterUnavailable

log = logging.getLogger(__name__)

DEFAULT_SYSFS_ROOT = Path("/sys/class/powercap")

PERMISSION_HELP = (
    "RAPL energy counters are readable by root only (the kernel's fix for CVE-2020-8694, 2020): run "
    "`sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` "
    "(until reboot) or add a udev rule that does it"
)


def _read_sysfs(path: Path) -> str:
    """The one place sysfs is read (tests patch it to simulate the kernel)."""
    return path.read_text().strip()


@dataclass
class _Domain:
    name: str
    energy_path: Path
    max_range_uj: int
    last_raw_uj: int | None = None
    total_uj: int = 0


class RaplCounter(Counter):
    """Package (+ DRAM) energy of all CPU sockets. Units: J.

    ``sysfs_root`` is ``/sys/class/powercap`` by default (a parameter so tests use a prepared folder).
    Raises ``MeterUnavailable`` when RAPL is absent or unreadable, with the reason and the fix.
    """

    method = "attributed"
    resolution_j = 1e-6
    update_period_s = 0.001
    sample_period_s = 0.01
    timing_slack_s = 0.0

    def __init__(self, sysfs_root: Path | str = DEFAULT_SYSFS_ROOT) -> None:
        root = Path(sysfs_root)
        self._lock = threading.Lock()
        if not root.is_dir() or not any(root.glob("intel-rapl:*")):
            raise MeterUnavailable(f"no {root}/intel-rapl: RAPL is not exposed (typical in VMs)")
        self._domains: list[_Domain] = []
        limits_w: list[float] = []
        try:
            for pkg in sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1):
                name = _read_sysfs(pkg / "name")
                if not name.startswith("package"):
                    continue  # psys overlaps the packages and DRAM
                self._domains.append(self._domain(pkg, name))
                limits_w.append(self._power_limit_w(pkg))
                for sub in sorted(pkg.glob(f"{pkg.name}:*")):
                    sub_name = _read_sysfs(sub / "name")
                    if sub_name == "dram":
                        self._domains.append(self._domain(sub, f"{name}/dram"))
        except PermissionError as e:
            raise MeterUnavailable(PERMISSION_HELP) from e
        except (OSError, ValueError) as e:
            raise MeterUnavailable(f"RAPL: cannot read {root}: {e}") from e
        if not self._domains:
            raise MeterUnavailable(f"RAPL: no package domain under {root}")
        self.domain_names = [d.name for d in self._domains]
        has_dram = any(d.name.endswith("/dram") for d in self._domains)
        self.name = "rapl:" + ("package+dram" if has_dram else "package")
        known = [w for w in limits_w if w > 0]
        # DRAM has no power limit we trust; allow it 30 % on top of the packages' limits.
        self.max_power_w = sum(known) * (1.3 if has_dram else 1.0) if len(known) == len(limits_w) else None
        self.read_j()  # prime the wrap state (and fail now, not in the sampler, if unreadable)
        self.read_cost_s = measure_read_cost_s(self, reads=5)

    @staticmethod
    def _domain(path: Path, name: str) -> _Domain:
        return _Domain(name, path / "energy_uj", int(_read_sysfs(path / "max_energy_range_uj")))

    @staticmethod
    def _power_limit_w(pkg: Path) -> float:
        """The largest constraint (PL2 ≥ PL1) of a package, W; 0 where none is readable."""
        best_uw = 0
        for p in pkg.glob("constraint_*_power_limit_uw"):
            try:
                best_uw = max(best_uw, int(_read_sysfs(p)))
            except (OSError, ValueError):
                continue
        return best_uw / 1e6

    def read_j(self) -> float:
        with self._lock:
            total_uj = 0
            for d in self._domains:
                try:
                    raw = int(_read_sysfs(d.energy_path))
                except PermissionError as e:
                    raise MeterUnavailable(PERMISSION_HELP) from e
                except (OSError, ValueError) as e:
                    raise MeterUnavailable(f"RAPL: cannot read {d.energy_path}: {e}") from e
                if d.last_raw_uj is not None:
                    delta = raw - d.last_raw_uj
                    if delta < 0:  # wrapped at max_energy_range_uj
                        delta += d.max_range_uj
                    d.total_uj += delta
                d.last_raw_uj = raw
                total_uj += d.total_uj
            return total_uj / 1e6

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["domains"] = list(self.domain_names)
        out["caveats"] = ["whole-socket energy: other processes on the CPU are counted too"]
        return out


def probe_rapl(sysfs_root: Path | str = DEFAULT_SYSFS_ROOT) -> MeterStatus:
    try:
        counter = RaplCounter(sysfs_root)
    except MeterUnavailable as e:
        return MeterStatus("rapl", False, str(e))
    return MeterStatus(counter.name, True, "domains: " + ", ".join(counter.domain_names))
