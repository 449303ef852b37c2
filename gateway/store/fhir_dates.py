"""FHIR date, dateTime and instant values as half-open UTC ranges [low, high) by their precision."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

# Bounds for open-ended periods; both backends store them (PostgreSQL timestamps start at 4713 BC).
MIN_DATETIME = datetime(1, 1, 1)
MAX_DATETIME = datetime.max

# FHIR R4 datatypes.html#dateTime, relaxed as search values allow (search.html#date): seconds are
# optional when a time is given, and a time without an offset is read as UTC.
_DATE_TIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


class InvalidDate(ValueError):
    """The text is not a FHIR date, dateTime or instant."""


def date_range(text: str) -> tuple[datetime, datetime]:
    """Return the naive-UTC range [low, high) that ``text`` covers at its stated precision."""
    match = _DATE_TIME.fullmatch(text.strip())
    if not match:
        raise InvalidDate(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][zone])")
    try:
        return _range(match.groupdict())
    except (ValueError, OverflowError) as exc:
        raise InvalidDate(f"{text!r} is not a valid date: {exc}") from None


def _range(part: dict[str, str | None]) -> tuple[datetime, datetime]:
    year = int(part["year"] or 0)
    if part["month"] is None:
        return _clamp(datetime(year, 1, 1), _add_months(year, 1, 12))
    month = int(part["month"])
    if part["day"] is None:
        return _clamp(datetime(year, month, 1), _add_months(year, month, 1))
    day = datetime(year, month, int(part["day"] or 0))
    if part["hour"] is None:
        return _clamp(day, day + timedelta(days=1) if day.date() < MAX_DATETIME.date() else MAX_DATETIME)
    second = min(int(part["second"] or 0), 59)  # a leap second (60) counts as 59
    fraction = part["fraction"] or ""
    micro = int((fraction + "000000")[:6])
    local = day.replace(hour=int(part["hour"] or 0), minute=int(part["minute"] or 0), second=second, microsecond=micro)
    if part["second"] is None:
        step = timedelta(minutes=1)
    elif not fraction:
        step = timedelta(seconds=1)
    else:
        step = timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    low = _to_utc(local, part["zone"])
    return _clamp(low, low + step if low < MAX_DATETIME - step else MAX_DATETIME)


def period_range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """Range of a FHIR Period; a missing start or end is open (datatypes.html#Period)."""
    low = date_range(start)[0] if start else MIN_DATETIME
    high = date_range(end)[1] if end else MAX_DATETIME
    if high <= low:
        raise InvalidDate(f"period end {end!r} is before its start {start!r}")
    return low, high


def format_instant(moment: datetime) -> str:
    """Format a naive-UTC datetime as a FHIR instant with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    day = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    return f"{day}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"


def _to_utc(local: datetime, zone: str | None) -> datetime:
    if not zone or zone == "Z":
        return local
    sign = 1 if zone[0] == "+" else -1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    if offset > timedelta(hours=14):
        raise InvalidDate(f"time zone offset {zone!r} is beyond +/-14:00")
    return (local.replace(tzinfo=timezone(sign * offset))).astimezone(UTC).replace(tzinfo=None)


def _add_months(year: int, month: int, months: int) -> datetime:
    index = year * 12 + (month - 1) + months
    if index // 12 > 9999:
        return MAX_DATETIME
    return datetime(index // 12, index % 12 + 1, 1)


def _clamp(low: datetime, high: datetime) -> tuple[datetime, datetime]:
    return max(low, MIN_DATETIME), min(high, MAX_DATETIME)
