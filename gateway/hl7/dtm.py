"""HL7 v2 DTM/DT/TS values (chapter 2A.22 DTM) as FHIR date, dateTime and instant.

A DTM is ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``. FHIR (R4 datatypes) allows a date at
year, month or day precision, and a dateTime with a time only when it carries seconds *and* a zone
("If hours and minutes are specified, a time zone SHALL be populated"). So:

* precision is kept down to the day; a time is kept (minutes and seconds padded with zeros, the
  fraction kept) when the value has an offset, or when a zone is given for the sender (see
  gateway.convert.runtime.engine.Converter.zone_for: configured, else MSH-7's offset, else the
  host's zone): then the offset that zone had at that local time is written (daylight saving
  time included);
* a value with a time but no offset and no zone at all is truncated to its date;
* an instant needs a time and a zone: ``to_instant`` returns None without either, and
  ``to_instant_assume_utc`` reads a value without one as UTC (used only for Provenance.recorded).

Every function returns None for text that is not a valid DTM (bad digits, month 13, 30 February,
offset beyond +/-14:00), so an invalid value is dropped instead of producing invalid FHIR.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import NamedTuple

_DTM = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,9})?)?)?)?)?)?([+-]\d{4})?$")


class Dtm(NamedTuple):
    year: str
    month: str | None
    day: str | None
    hour: str | None
    minute: str | None
    second: str | None
    fraction: str | None  # ".1234" or None
    offset: str | None  # "+01:00" or None


def parse_dtm(text: str) -> Dtm | None:
    """Split and range-check a DTM; None when it is not one."""
    m = _DTM.match(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    if year == "0000":
        return None
    if month is not None and not 1 <= int(month) <= 12:
        return None
    if day is not None and not 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]:
        return None
    if hour is not None and int(hour) > 23:
        return None
    if minute is not None and int(minute) > 59:
        return None
    if second is not None and int(second) > 59:
        return None
    zone = None
    if offset is not None:
        hh, mm = int(offset[1:3]), int(offset[3:5])
        # FHIR's zone pattern: (0[0-9]|1[0-3]):[0-5][0-9] or 14:00.
        if mm > 59 or hh > 14 or (hh == 14 and mm):
            return None
        zone = f"{offset[0]}{offset[1:3]}:{offset[3:5]}"
    return Dtm(year, month, day, hour, minute, second, fraction, zone)


def _date_part(d: Dtm) -> str:
    text = d.year
    if d.month is not None:
        text += f"-{d.month}"
        if d.day is not None:
            text += f"-{d.day}"
    return text


def _time_part(d: Dtm) -> str:
    return f"T{d.hour}:{d.minute or '00'}:{d.second or '00'}{d.fraction or ''}"


def _zone_at(d: Dtm, tz: tzinfo | None) -> str | None:
    """The offset of ``d``: its own, else the one ``tz`` had at that local time, else None."""
    if d.offset is not None or tz is None or d.day is None:
        return d.offset
    local = datetime(
        int(d.year), int(d.month or 1), int(d.day), int(d.hour or 0), int(d.minute or 0), int(d.second or 0)
    )
    offset = tz.utcoffset(local)
    if offset is None:
        return None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def to_date(text: str, tz: tzinfo | None = None) -> str | None:
    """FHIR ``date``: year, year-month or full date; any time is dropped (the zone does not matter)."""
    d = parse_dtm(text)
    return None if d is None else _date_part(d)


def to_datetime(text: str, tz: tzinfo | None = None) -> str | None:
    """FHIR ``dateTime``: the time is kept only with a zone (its own or ``tz``), else it becomes a date."""
    d = parse_dtm(text)
    if d is None:
        return None
    zone = _zone_at(d, tz)
    if d.hour is None or zone is None or d.day is None:
        return _date_part(d)
    return _date_part(d) + _time_part(d) + zone


def to_datetime_with_time(text: str, tz: tzinfo | None = None) -> str | None:
    """A dateTime only when it keeps a time of day (for extensions such as patient-birthTime)."""
    value = to_datetime(text, tz)
    return value if value is not None and "T" in value else None


def _instant(text: str, tz: tzinfo | None, default_zone: str | None) -> str | None:
    d = parse_dtm(text)
    if d is None or d.day is None:
        return None
    zone = _zone_at(d, tz) or default_zone
    if zone is None:
        return None
    hour = d.hour or "00"
    return f"{_date_part(d)}T{hour}:{d.minute or '00'}:{d.second or '00'}{d.fraction or ''}{zone}"


def offset_zone(text: str) -> tzinfo | None:
    """The fixed zone of a DTM's own offset (MSH-7 ``20240312140000+0100`` -> UTC+01:00); None
    without one. The sender's clock, for its other timestamps that carry no offset."""
    d = parse_dtm(text)
    if d is None or d.offset is None:
        return None
    sign = -1 if d.offset[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(d.offset[1:3]), minutes=int(d.offset[4:6])))


def to_instant(text: str, tz: tzinfo | None = None) -> str | None:
    """FHIR ``instant`` (seconds and zone required); None when neither the DTM nor ``tz`` gives a zone."""
    return _instant(text, tz, None)


def to_instant_assume_utc(text: str, tz: tzinfo | None = None) -> str | None:
    """FHIR ``instant``, reading a DTM without offset in ``tz``, else as UTC (docs/mappings.md)."""
    return _instant(text, tz, "Z")
