"""Named builders for values beyond codes and names: locations (PL), quantities (CQ), attachments
(ED, RP) and times (TM). Registered by ``@builder`` / ``@transform`` like those in builders.py."""

from __future__ import annotations

import base64
import binascii
import html
import re
from datetime import datetime, timedelta
from typing import Any

from gateway.convert.functions import builders
from gateway.convert.functions.registry import builder, transform
from gateway.convert.functions.text import text_of, to_decimal
from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.hl7 import dtm
from gateway.hl7.message import Element

_PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
# The most specific level a PL names (chapter 2A.53: PL.3 bed, PL.2 room, PL.1 point of care).
_LEVELS = ((3, "bd", "Bed"), (2, "ro", "Room"), (1, "wa", "Ward"))


@builder
def location_name(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """A PL's name: point of care, room and bed ("EMERG 101 01"), else its description PL.9, else
    the facility PL.4 it names alone."""
    if not element:
        return None
    parts = [text_of(element[n]) for n in (1, 2, 3)]
    return " ".join(p for p in parts if p) or text_of(element[9]) or text_of(element[4]) or None


@builder
def location_mode(element: Element | None, ctx: Context, table: Table | None) -> str | None:
    """Location.mode "instance" for a PL that names a place (IG PL[Location])."""
    return "instance" if element and any(text_of(element[n]) for n in (1, 2, 3, 9)) else None


@builder
def location_physical_type(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """Location.physicalType of the most specific level the PL names (bed, room, ward)."""
    if not element:
        return None
    for position, code, display in _LEVELS:
        if text_of(element[position]):
            return {"coding": [{"system": _PHYSICAL_TYPE, "code": code, "display": display}]}
    if text_of(element[4]) and not text_of(element[9]):
        return {"coding": [{"system": _PHYSICAL_TYPE, "code": "si", "display": "Site"}]}
    return None


@builder
def composite_quantity(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """CQ (chapter 2A.15) -> Quantity: CQ.1 value, CQ.2 units (UCUM when CQ.2.3 says so)."""
    if not element:
        return None
    quantity: dict[str, Any] = {}
    value = to_decimal(text_of(element[1]))
    if value is not None:
        quantity["value"] = value
    unit = builders.quantity_unit(element[2], ctx, None) if element[2] else None
    if unit:
        quantity.update(unit)
    return quantity or None


_MIME_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
# HL7 table 0191 type of referenced data -> MIME top-level type.
_MEDIA = {
    "TEXT": "text",
    "AP": "application",
    "IM": "image",
    "AU": "audio",
    "MULTIPART": "multipart",
    "APPLICATION": "application",
    "IMAGE": "image",
    "AUDIO": "audio",
    "VIDEO": "video",
}


def _content_type(kind: str, subtype: str) -> str | None:
    """A MIME type from v2 type of data and subtype (tables 0191, 0291): AP + PDF -> application/pdf."""
    media = _MEDIA.get(kind.upper())
    sub = subtype.lower()
    if media and _MIME_TOKEN.match(sub):
        return f"{media}/{sub}"
    if media == "text" and not sub:
        return "text/plain"
    return None


def _base64(data: str, encoding: str) -> str | None:
    """ED.5 data as base64 per ED.4 encoding (table 0299: A ASCII, Hex, Base64); None if invalid."""
    kind = encoding.strip().upper()
    try:
        if kind == "BASE64":
            compact = re.sub(r"\s+", "", data)
            base64.b64decode(compact, validate=True)
            return compact or None
        if kind == "HEX":
            return base64.b64encode(bytes.fromhex(re.sub(r"\s+", "", data))).decode() or None
        if kind in ("A", ""):
            return base64.b64encode(data.encode("utf-8")).decode() or None
    except (binascii.Error, ValueError):
        return None
    return None


@builder
def encapsulated_attachment(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """ED (chapter 2A.24) -> Attachment: contentType from ED.2/ED.3, data from ED.5 by ED.4 (IG
    ED[Attachment]); data that is not what ED.4 says is left out and noted."""
    if not element:
        return None
    attachment: dict[str, Any] = {}
    content_type = _content_type(text_of(element[2]), text_of(element[3]))
    raw = element[5].value
    data = _base64(raw, text_of(element[4])) if raw else None
    if raw and data is None:
        ctx.note(f"ED data encoded as {text_of(element[4])!r} could not be read; attachment data left out")
    if data is not None:
        attachment["contentType"] = content_type or "application/octet-stream"  # att-1
        attachment["data"] = data
    elif content_type:
        attachment["contentType"] = content_type
    return attachment or None


@builder
def pointer_attachment(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """RP (chapter 2A.65) -> Attachment: RP.1 pointer as url, RP.3/RP.4 as contentType (IG RP[Attachment])."""
    if not element:
        return None
    attachment: dict[str, Any] = {}
    content_type = _content_type(text_of(element[3]), text_of(element[4]))
    if content_type:
        attachment["contentType"] = content_type
    pointer = text_of(element[1])
    if pointer and not re.search(r"\s", pointer):
        attachment["url"] = pointer
    return attachment or None


_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,9})?)?)?([+-]\d{4})?$")


@transform
def tm_to_time(text: str) -> str | None:
    """v2 TM (chapter 2A.75) -> FHIR time "HH:MM:SS[.S]"; FHIR time has no zone, so it is dropped."""
    m = _TM.match(text.strip())
    if m is None:
        return None
    hour, minute, second, fraction, _offset = m.groups()
    if int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 59:
        return None
    return f"{hour}:{minute or '00'}:{second or '00'}{fraction or ''}"


_TEXT_TYPES = ("TX", "FT", "ST")


@builder(reads="message", fields=("OBX-2", "OBX-5"))
def document_text(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """The text of a document (MDM): every text OBX (TX, FT, ST; each repetition a line), in order,
    as one text/plain attachment. A note sent as n OBX lines is one document with one rendition,
    not n (IG OBX[DocumentReference] TX/FT rows, read for the whole document)."""
    lines = [
        rep.value
        for segment in ctx.message.all("OBX")
        if text_of(segment.field(2)).upper() in _TEXT_TYPES
        for rep in segment.repetitions(5)
    ]
    text = "\n".join(lines).strip()
    if not text:
        return None
    data = base64.b64encode(text.encode("utf-8")).decode()
    return {"attachment": {"contentType": "text/plain", "data": data}}


# TXA-3 document content presentation (HL7 table 0191) as a MIME type.
_PRESENTATION = {"TX": "text/plain", "FT": "text/plain", "TEXT": "text/plain", "AP": "application/octet-stream"}


@builder(reads="message", fields=("TXA-2", "TXA-3", "TXA-16", "TXA-25"))
def document_notice(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """DocumentReference.content (1..*) for a document notification without content (MDM T01):
    an attachment naming the document (title TXA-25, else file name TXA-16, else type TXA-2) and
    its presentation TXA-3. None when OBX segments carry the content."""
    txa = ctx.segment
    if txa is None or ctx.message.all("OBX"):
        return None
    attachment: dict[str, Any] = {}
    content_type = _PRESENTATION.get(text_of(txa.field(3)).upper())
    if content_type:
        attachment["contentType"] = content_type
    title = text_of(txa.field(25)) or text_of(txa.field(16)) or txa.field(2)[2].value.strip() or text_of(txa.field(2))
    if title:
        attachment["title"] = title
    return {"attachment": attachment} if attachment else {"attachment": {"title": "document"}}


@builder
def narrative(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """A text (PV2-12 visit description) as the resource's Narrative, escaped XHTML, status additional."""
    text = text_of(element) if element else ""
    if not text:
        return None
    div = html.escape(text, quote=False).replace("\n", "<br/>")
    return {"status": "additional", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{div}</div>'}


@builder(reads="segment", fields=("PR1-7",))
def procedure_period(element: Element | None, ctx: Context, table: Table | None) -> dict[str, Any] | None:
    """Procedure.performedPeriod: from the date/time (PR1-5) for the minutes the procedure took (PR1-7)."""
    start = dtm.to_datetime(text_of(element), ctx.tz) if element else None
    if not start:
        return None
    period: dict[str, Any] = {"start": start}
    minutes = to_decimal(text_of(ctx.segment.field(7))) if ctx.segment is not None else None
    if minutes is not None and minutes >= 0 and "T" in start:
        end = datetime.fromisoformat(start) + timedelta(minutes=minutes)
        period["end"] = end.isoformat(timespec="seconds")
    return period
