"""Named builders of order timing (chapter 4.5.4 TQ1, 2A.65 RPT): repeat patterns, durations and
offsets as FHIR Timing parts (IG TQ1[ServiceRequest], TQ1[MedicationRequest], RPT[Timing])."""

from __future__ import annotations

import re
from typing import Any

from gateway.convert.functions.registry import builder
from gateway.convert.functions.text import text_of, to_decimal
from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element

_UCUM = "http://unitsofmeasure.org"
_V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"
_GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

#: Units of time as senders write them (UCUM, ISO+ and the letters of table 0335) -> the UCUM code
#: FHIR Timing and Duration take (units-of-time: s, min, h, d, wk, mo, a).
_TIME_UNITS = {
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "min": "min", "m": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "wk": "wk", "w": "wk", "week": "wk", "weeks": "wk",
    "mo": "mo", "l": "mo", "month": "mo", "months": "mo",
    "a": "a", "y": "a", "yr": "a", "year": "a", "years": "a",
}  # fmt: skip
_MINUTES = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440, "wk": 10080}
#: Table 0335 codes with a v3 GTS abbreviation (IG concept map RepeatPattern).
_GTS_CODES = {"Q1H": "Q1H", "Q2H": "Q2H", "Q3H": "Q3H", "Q4H": "Q4H", "Q6H": "Q6H", "Q8H": "Q8H", "Q1D": "QD",
              "Q1W": "WK", "Q1L": "MO", "BID": "BID", "TID": "TID", "QID": "QID", "QOD": "QOD"}  # fmt: skip
#: Fixed table 0335 codes -> (frequency, period, periodUnit). QAM, QPM and QHS say when in the day
#: only by their code: a repeat.when would forbid the explicit times TQ1-4 gives (R4 tim-10).
_FIXED: dict[str, tuple[int, int, str]] = {
    "BID": (2, 1, "d"),
    "TID": (3, 1, "d"),
    "QID": (4, 1, "d"),
    "QAM": (1, 1, "d"),
    "QPM": (1, 1, "d"),
    "QHS": (1, 1, "d"),
    "QSHIFT": (3, 1, "d"),
    "QOD": (1, 2, "d"),
}
_EVERY = re.compile(r"Q(\d+)(S|M|H|D|W|L)")
_WEEKDAYS = re.compile(r"Q(\d+)J([1-7]+)")
_TIMES_A_DAY = re.compile(r"([5-9]|[1-9]\d)ID")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: FHIR event-timing codes (R4) an RPT.8 event may be: v2 table 0335 events that FHIR also has.
EVENT_TIMING = frozenset({"HS", "WAKE", "C", "CM", "CD", "CV", "AC", "ACM", "ACD", "ACV", "PC", "PCM", "PCD", "PCV"})


def time_unit(units: Element) -> str | None:
    """A CWE unit of time (code, else text) as the UCUM code of FHIR units-of-time, else None."""
    for text in (text_of(units[1]), text_of(units[2])):
        found = _TIME_UNITS.get(text.lower()) if text else None
        if found:
            return found
    return None


def _pattern_code(code: str, system: str | None, text: str) -> dict[str, Any]:
    """Timing.code: the table 0335 code (its GTS abbreviation first when it has one)."""
    codings: list[dict[str, str]] = [{"system": system, "code": code} if system else {"code": code}]
    if code in _GTS_CODES:
        codings.insert(0, {"system": _GTS, "code": _GTS_CODES[code]})
    concept: dict[str, Any] = {"coding": codings}
    if text:
        concept["text"] = text
    return concept


def _repeat_of_code(code: str) -> dict[str, Any]:
    """Timing.repeat for a table 0335 code: Q4H is once every 4 hours, BID twice a day."""
    if code in _FIXED:
        frequency, period, unit = _FIXED[code]
        return {"frequency": frequency, "period": period, "periodUnit": unit}
    if m := _EVERY.fullmatch(code):
        unit = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}[m.group(2)]
        return {"frequency": 1, "period": int(m.group(1)), "periodUnit": unit}
    if m := _WEEKDAYS.fullmatch(code):
        days = [_DAYS[int(d) - 1] for d in dict.fromkeys(m.group(2))]
        return {"frequency": len(days), "period": int(m.group(1)), "periodUnit": "wk", "dayOfWeek": days}
    if m := _TIMES_A_DAY.fullmatch(code):
        return {"frequency": int(m.group(1)), "period": 1, "periodUnit": "d"}
    return {}


@builder
def repeat_pattern(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """RPT (TQ1-3) -> Timing (IG RPT[Timing]): the code (v2-0335, and its GTS abbreviation), and
    the frequency and period it says (Q4H: every 4 hours), RPT.5/RPT.6 period and RPT.8 event."""
    if not element:
        return None
    pattern = element[1]  # RPT.1, a CWE: code, text and coding system are its subcomponents
    code = text_of(pattern[1]).upper()
    timing: dict[str, Any] = {}
    if code:
        named = text_of(pattern[3])
        timing["code"] = _pattern_code(code, ctx.systems.system(named) if named else _V2_0335, text_of(pattern[2]))
    repeat = _repeat_of_code(code)
    period = to_decimal(text_of(element[5]))
    unit = time_unit(element[6]) if element[6] else None
    if period is not None and period >= 0 and unit:
        repeat.update(period=period, periodUnit=unit)
        repeat.setdefault("frequency", 1)
    event = text_of(element[8]).upper()
    if event in EVENT_TIMING:
        repeat["when"] = [event]
    if repeat:
        timing["repeat"] = repeat
    return timing or None


def _time_quantity(element: Element) -> tuple[int | float, str] | None:
    value = to_decimal(text_of(element[1]))
    unit = time_unit(element[2]) if element[2] else None
    if value is None or value < 0 or unit is None:
        return None
    return value, unit


@builder
def time_duration(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CQ (TQ1-6 service duration) -> Duration in UCUM (R4 drt-1 wants a time unit code)."""
    found = _time_quantity(element) if element else None
    if found is None:
        return None
    value, unit = found
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit}


@builder
def repeat_duration(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CQ (TQ1-13 occurrence duration) -> Timing.repeat duration and durationUnit."""
    found = _time_quantity(element) if element else None
    if found is None:
        return None
    return {"duration": found[0], "durationUnit": found[1]}


@builder
def offset_minutes(element: Element | None, ctx: Context, table: Table | None) -> int | None:
    """CQ (TQ1-5 relative time, "30^min") -> Timing.repeat.offset, whole minutes (unsignedInt)."""
    found = _time_quantity(element) if element else None
    if found is None or found[1] not in _MINUTES:
        return None
    return round(found[0] * _MINUTES[found[1]])


# --- TQ (ORC-7 quantity/timing, v2.3 to v2.6; IG TQ[ServiceRequest], TQ[MedicationRequest]) --------

_TQ_DURATION = re.compile(r"([SMHDWL])(\d+(?:\.\d+)?)")
_TIME = re.compile(r"(\d{2})(\d{2})")


@builder
def interval_code(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """RI (TQ.2 interval) -> Timing.code: RI.1 repeat pattern (table 0335), IG RI[Timing]."""
    code = text_of(element[1]).upper() if element else ""
    return _pattern_code(code, _V2_0335, "") if code else None


@builder
def interval_repeat(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """RI (TQ.2 interval) -> Timing.repeat: the frequency and period RI.1 says, RI.2 explicit
    times ("0800,1400") as timeOfDay."""
    if not element:
        return None
    repeat = _repeat_of_code(text_of(element[1]).upper())
    times = [
        f"{m.group(1)}:{m.group(2)}:00" for t in text_of(element[2]).split(",") if (m := _TIME.fullmatch(t.strip()))
    ]
    if times and all(t < "24" for t in times):
        repeat["timeOfDay"] = times
    return repeat or None


@builder
def tq_duration(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """TQ.3 duration ("M30" 30 minutes, "D5" 5 days; chapter 4.4.3) -> Duration in UCUM; "INDEF"
    and "X<n>" (times) give none."""
    m = _TQ_DURATION.fullmatch(text_of(element).upper()) if element else None
    if m is None:
        return None
    unit = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}[m.group(1)]
    value = to_decimal(m.group(2))
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit} if value is not None else None
