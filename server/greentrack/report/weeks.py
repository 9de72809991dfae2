"""ISO weeks in the developer's local time zone, as UTC boundaries the store's ``ts`` column can be compared to.

Place in the flow: the report turns ``--week YYYY-Www`` and ``--tz`` into ``Week``; its ``day_starts_utc`` split
the rows into local days (so a week across a daylight-saving change has a 23- or 25-hour day, and its own
offsets at each end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from greentrack.errors import UsageError

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def local_zone(tz: str | None) -> tzinfo:
    """The named IANA zone, or the machine's local zone when ``tz`` is None. Raises ``UsageError``."""
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise UsageError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Berlin)") from e
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


def zone_name(zone: tzinfo) -> str:
    key = getattr(zone, "key", None)
    return str(key) if key else str(datetime.now(zone).tzname())


@dataclass(frozen=True)
class Week:
    """One ISO week in a time zone. ``start``/``end`` are local midnights (end exclusive)."""

    year: int
    number: int
    zone: tzinfo

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.number:02d}"

    @property
    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.number, 1)

    def days(self) -> list[date]:
        return [self.monday + timedelta(days=i) for i in range(7)]

    def midnight(self, day: date) -> datetime:
        """Local midnight of ``day`` (zoneinfo resolves gaps and folds; midnight is in neither in practice)."""
        return datetime(day.year, day.month, day.day, tzinfo=self.zone)

    @property
    def start(self) -> datetime:
        return self.midnight(self.monday)

    @property
    def end(self) -> datetime:
        return self.midnight(self.monday + timedelta(days=7))

    def day_starts_utc(self) -> list[str]:
        """The 8 UTC boundaries of the 7 local days, in the store's ``ts`` format."""
        return [utc_ts(self.midnight(self.monday + timedelta(days=i))) for i in range(8)]

    def previous(self) -> Week:
        y, w, _ = (self.monday - timedelta(days=7)).isocalendar()
        return Week(y, w, self.zone)


def utc_ts(moment: datetime) -> str:
    """The store's ``ts`` text for an aware datetime: UTC, microseconds, ``+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_week(text: str | None, zone: tzinfo, *, now: datetime | None = None) -> Week:
    """``"YYYY-Www"`` → ``Week``; None → the week of ``now`` (default: the current time) in ``zone``.

    Raises ``UsageError`` for a malformed label or a week the year does not have (e.g. W53 of 2026).
    """
    if text is None:
        moment = (now or datetime.now(UTC)).astimezone(zone)
        y, w, _ = moment.date().isocalendar()
        return Week(y, w, zone)
    match = _WEEK.match(text.strip())
    if not match:
        raise UsageError(f"--week must look like 2026-W47 (ISO year, 'W', two-digit week), not {text!r}")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        date.fromisocalendar(year, number, 1)
    except ValueError as e:
        raise UsageError(f"{text} is not a week of {year} (ISO years have 52 or 53 weeks)") from e
    return Week(year, number, zone)
