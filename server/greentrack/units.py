"""How every figure is written for people: energy, power, CO2e, time and shares, one rule for the whole product.

Place in the flow: at the bottom, imported by the command line (``display``), the report (``report.render``,
``report.html``, ``report.tips``) and the servers. ``extension/src/format.ts`` mirrors it for the status bar, string
for string: ``tests/fixtures/units.json`` holds values with their expected text for both sides, and
``tests/test_units.py`` also feeds both the same generated values and compares the strings.

The rule: three significant digits without exponent notation (``5.00 J``, ``32.1 J``, ``321 J``), with the SI
prefix that puts the rounded figure in [1, 1000): ``647 µJ``, not ``0.647 mJ``. Rounding comes before the choice of
prefix (0.9996 J reads ``1.00 J``, never ``1000 mJ``); ties round half up, as JavaScript's ``toPrecision`` does,
on the exact binary value. Beyond the largest prefix the figure is written whole (``1235 MJ``); below a hundredth
of the smallest, ``<0.01 µJ``. Zero is ``0 J``; a missing, negative, NaN or infinite value is ``? J``.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Context, Decimal

UNKNOWN = "?"
_EXACT = Context(prec=400, rounding=ROUND_HALF_UP)  # every double's integer part fits

#: (power of ten, unit) from the smallest to the largest.
ENERGY_UNITS: tuple[tuple[int, str], ...] = ((-6, "µJ"), (-3, "mJ"), (0, "J"), (3, "kJ"), (6, "MJ"))
POWER_UNITS: tuple[tuple[int, str], ...] = ((-3, "mW"), (0, "W"), (3, "kW"), (6, "MW"))
CO2E_UNITS: tuple[tuple[int, str], ...] = ((-6, "µg"), (-3, "mg"), (0, "g"), (3, "kg"), (6, "t"))


def _whole(value: float) -> str:
    """The nearest integer, halves up (JavaScript's ``Math.round``), as digits; never ``-0``."""
    if value == 0:
        return "0"
    return format(Decimal(value).quantize(Decimal(1), context=_EXACT), "f")


def three_significant(value: float) -> str:
    """Three significant digits, without exponent notation (``3.21``, ``32.1``, ``321``, ``5.00``, ``0.0123``).

    Values that round to 1000 or more are written whole (``1000``, ``1234``). For finite values from 1e-6 to
    1e21, the same text as ``extension/src/format.ts``'s ``threeSignificant`` (``toPrecision(3)``).
    """
    if value == 0:
        return "0"
    if abs(value) >= 999.5:
        return _whole(value)
    exact = Decimal(value)
    rounded = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 2), context=_EXACT)
    if rounded.adjusted() > exact.adjusted():  # 9.996 → 10.00: keep three digits, 10.0
        rounded = rounded.quantize(Decimal(1).scaleb(rounded.adjusted() - 2), context=_EXACT)
    return format(rounded, "f")


def _scaled(value: float, power: int) -> float:
    """``value`` in units of 10**power; the same float operations as format.ts (multiply or divide by an exact
    power of ten)."""
    factor: int = 10 ** abs(power)
    return value * factor if power < 0 else value / factor


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0


def fmt_quantity(value: float | None, units: tuple[tuple[int, str], ...]) -> str:
    """``value`` (in the base unit, power 0) with the unit of ``units`` that fits (see the module's rule)."""
    base = next(unit for power, unit in units if power == 0)
    if value is None or not _known(value):
        return f"{UNKNOWN} {base}"
    if value == 0:
        return f"0 {base}"
    smallest_power, smallest_unit = units[0]
    if _scaled(value, smallest_power) < 0.01:
        return f"<0.01 {smallest_unit}"
    for power, unit in units[:-1]:
        text = three_significant(_scaled(value, power))
        if float(text) < 1000:
            return f"{text} {unit}"
    power, unit = units[-1]
    return f"{three_significant(_scaled(value, power))} {unit}"


def fmt_energy(energy_j: float | None) -> str:
    """An energy: ``647 µJ``, ``125 mJ``, ``3.21 J``, ``12.5 kJ``, ``34.0 MJ``. Units: ``energy_j`` in J."""
    return fmt_quantity(energy_j, ENERGY_UNITS)


def fmt_power(power_w: float | None) -> str:
    """A power: ``850 mW``, ``247 W``, ``1.20 kW``. Units: ``power_w`` in W."""
    return fmt_quantity(power_w, POWER_UNITS)


def fmt_co2e(mass_g: float | None) -> str:
    """A mass of CO2e: ``875 µg``, ``4.20 mg``, ``1.00 g``, ``7.80 kg``, ``1.20 t``. Units: ``mass_g`` in g."""
    return fmt_quantity(mass_g, CO2E_UNITS)


def fmt_duration_ms(duration_ms: float | None) -> str:
    """A duration: whole milliseconds below a second (``45 ms``), else seconds (``1.23 s``). Units: ms."""
    if duration_ms is None or not _known(duration_ms):
        return f"{UNKNOWN} ms"
    whole_ms = _whole(duration_ms)
    if int(whole_ms) < 1000:
        return f"{whole_ms} ms"
    return f"{three_significant(duration_ms / 1000)} s"


def fmt_pct(share: float) -> str:
    """A share in [0, 1] as a percentage with one decimal: ``12.5%``."""
    return f"{share * 100:.1f}%"
