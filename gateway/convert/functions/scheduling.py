"""Named builders for scheduling (HL7 chapter 10, SIU): when an appointment and its resources start
and end. The times come, in this order, from TQ1-7/TQ1-8 (v2.5 and later), the deprecated SCH-11
TQ.4/TQ.5 (v2.3 and v2.4 senders), a start plus a duration (SCH-9/SCH-10), and the first service
(AIS-4 start, or the appointment's start plus the AIS-5 offset, plus the AIS-7 duration).

FHIR R4 Appointment needs both start and end or neither (invariant app-2), and both unless the
appointment is proposed, cancelled or waitlisted (app-3): a start whose end nothing gives is left
out, and an appointment whose status needs times the message does not give is left out with a note
(MappingError), rather than made invalid.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from gateway.convert.functions.registry import builder
from gateway.convert.functions.text import text_of, to_decimal
from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.errors import MappingError
from gateway.hl7 import dtm
from gateway.hl7.message import Element, Segment


class _Timing(NamedTuple):
    """Where a resource segment keeps its times: start, start offset and its units, duration and
    its units (chapter 10.6.3-10.6.6)."""

    start: int
    offset: int
    offset_units: int
    duration: int
    duration_units: int


_TIMING = {
    "AIS": _Timing(4, 5, 6, 7, 8),
    "AIG": _Timing(8, 9, 10, 11, 12),
    "AIL": _Timing(6, 7, 8, 9, 10),
    "AIP": _Timing(6, 7, 8, 9, 10),
}
_TIMING_FIELDS = tuple(f"{name}-{n}" for name, timing in _TIMING.items() for n in timing)
_APPOINTMENT_FIELDS = ("TQ1-7", "TQ1-8", "SCH-9", "SCH-10", "SCH-11", "SCH-25", "MSH-9")

#: Duration units (ISO+/ANSI, as chapter 10 senders write them) -> seconds. A unit not here gives
#: no end rather than a guessed one; no unit at all is minutes, the chapter's default.
_SECONDS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "wk": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip

#: R4 Appointment app-3: the statuses that may lack start and end.
_WITHOUT_TIMES = frozenset({"proposed", "cancelled", "waitlist"})
#: The events whose status outranks a service's AIS-10 (as SchedulingEvent_AppointmentStatus says).
_ENDING_EVENTS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}


def _instant(element: Element | None, ctx: Context) -> datetime | None:
    text = text_of(element)
    value = dtm.to_instant(text, ctx.tz) if text else None
    return datetime.fromisoformat(value) if value else None


def _duration(amount: Element | None, units: Element | None) -> timedelta | None:
    number = to_decimal(text_of(amount))
    if number is None or number < 0:
        return None
    unit = (text_of(units[1]) or text_of(units[2])) if units is not None and units.raw else ""
    seconds = _SECONDS.get(unit.lower()) if unit else 60
    return timedelta(seconds=number * seconds) if seconds is not None else None


def _text(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _field(seg: Segment | None, n: int) -> Element | None:
    return seg.field(n) if seg is not None else None


def _service_times(seg: Segment, ctx: Context, base: datetime | None) -> tuple[datetime | None, datetime | None]:
    """A resource's start (its own, else ``base`` plus its offset) and end (start plus duration)."""
    timing = _TIMING[seg.name]
    start = _instant(seg.field(timing.start), ctx)
    if start is None and base is not None:
        offset = _duration(seg.field(timing.offset), seg.field(timing.offset_units))
        start = base + offset if offset is not None else None
    duration = _duration(seg.field(timing.duration), seg.field(timing.duration_units))
    end = start + duration if start is not None and duration is not None else None
    return start, end


def _appointment_times(ctx: Context) -> tuple[datetime | None, datetime | None]:
    """The appointment's start and end, from TQ1, else SCH-11, else a duration, else the first
    service; (None, None) unless both are known (app-2)."""
    sch, tq1 = ctx.other_segment("SCH"), ctx.other_segment("TQ1")
    timing = _field(sch, 11)
    start = _instant(_field(tq1, 7), ctx) or (_instant(timing[4], ctx) if timing is not None else None)
    end = _instant(_field(tq1, 8), ctx) or (_instant(timing[5], ctx) if timing is not None else None)
    if start is not None and end is None:
        duration = _duration(_field(sch, 9), _field(sch, 10))
        end = start + duration if duration is not None else None
    service = ctx.message.segment("AIS")
    if service is not None and (start is None or end is None):
        service_start, service_end = _service_times(service, ctx, start)
        start = start or service_start
        end = end or service_end
    if start is None or end is None or end < start:
        return None, None
    return start, end


def _status(ctx: Context, table: Table | None) -> str:
    """The status the SCH[Appointment] rules give: SCH-25, else an ending event, else the first
    service's AIS-10, else booked."""
    sch, service = ctx.other_segment("SCH"), ctx.message.segment("AIS")
    event = ctx.message.msh.field(9)[2].value.strip()
    for code in (text_of(_field(sch, 25)), event, text_of(_field(service, 10))):
        if code == event:
            if code in _ENDING_EVENTS:
                return _ENDING_EVENTS[code]
            continue
        mapped = table.lookup(code) if table is not None and code else None
        if mapped is not None:
            return str(mapped["code"])
    return "booked"


@builder(reads="message", fields=_APPOINTMENT_FIELDS + _TIMING_FIELDS)
def appointment_start(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """Appointment.start: TQ1-7, else SCH-11.4 (v2.3), else the first service's start (AIS-4), when
    an end is known too."""
    return _text(_appointment_times(ctx)[0])


@builder(reads="message", fields=_APPOINTMENT_FIELDS + _TIMING_FIELDS)
def appointment_end(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """Appointment.end: TQ1-8, else SCH-11.5, else the start plus SCH-9 (SCH-10 units), else the
    first service's end (AIS-4 or the start plus AIS-5, plus AIS-7 in AIS-8 units). An appointment
    whose status (``table``: filler status codes) needs times without them is left out (app-3)."""
    end = _appointment_times(ctx)[1]
    if end is None and _status(ctx, table) not in _WITHOUT_TIMES:
        raise MappingError(
            "the message gives the appointment no start and end (TQ1-7/8, SCH-11, SCH-9, AIS-4/7), "
            "which FHIR R4 requires of an appointment that is not proposed, cancelled or waitlisted (app-3)"
        )
    return _text(end)


@builder(reads="message", fields=_APPOINTMENT_FIELDS + _TIMING_FIELDS)
def resource_start(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """A service's or resource's start (AIS-4, AIG-8, AIL-6, AIP-6), else the appointment's start
    plus its offset (AIS-5/6, AIG-9/10, AIL-7/8, AIP-7/8)."""
    seg = ctx.segment
    if seg is None or seg.name not in _TIMING:
        return None
    return _text(_service_times(seg, ctx, _appointment_times(ctx)[0])[0])


@builder(reads="message", fields=_APPOINTMENT_FIELDS + _TIMING_FIELDS)
def resource_end(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """A service's or resource's end: its start (see resource_start) plus its duration (AIS-7/8,
    AIG-11/12, AIL-9/10, AIP-9/10)."""
    seg = ctx.segment
    if seg is None or seg.name not in _TIMING:
        return None
    return _text(_service_times(seg, ctx, _appointment_times(ctx)[0])[1])


@builder(reads="message", fields=("NTE-3",))
def appointment_comment(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """Appointment.comment (one string in R4): the text of every NTE of the appointment, in order,
    each on a line of its own (IG NTE[Appointment-Comment]: the NTEs concatenated)."""
    group = ctx.group
    notes = (
        [item for item in group.items if isinstance(item, Segment) and item.name == "NTE"]
        if group is not None
        else ctx.message.all("NTE")
    )
    lines = [rep.value.strip() for note in notes for rep in note.repetitions(3)]
    return "\n".join(line for line in lines if line) or None
