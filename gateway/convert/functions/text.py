"""Named functions for primitives: the text of a value, and the transforms of text to FHIR
primitives (``transform: name``). A function returns None (never "", {} or []) when it has nothing to say."""

from __future__ import annotations

import re
from decimal import Decimal

from gateway.convert.functions.registry import READS, TRANSFORMS, ZONED_TRANSFORMS, transform
from gateway.hl7 import dtm
from gateway.hl7.message import Element


def text_of(element: Element | None) -> str:
    """The text of a primitive: the first component's first subcomponent, unescaped, trimmed."""
    if element is None or not element.raw:
        return ""
    return element.first.strip() if element else ""


# --- transforms: text -> FHIR primitive ----------------------------------------------------------

transform_dtm = {
    "dtm_to_date": dtm.to_date,
    "dtm_to_datetime": dtm.to_datetime,
    "dtm_to_datetime_with_time": dtm.to_datetime_with_time,
    "dtm_to_instant": dtm.to_instant,
    "dtm_to_instant_assume_utc": dtm.to_instant_assume_utc,
}
TRANSFORMS.update(transform_dtm)
ZONED_TRANSFORMS.update(transform_dtm)
READS.update({"dtm_to_date": "a date", "dtm_to_datetime": "a date/time"})
READS.update({"to_decimal": "a number", "to_integer": "an integer", "to_positive_int": "a positive integer"})

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
#: Integers of up to this many digits are ints (any fits in 64 bits); longer ones Decimals.
_INT_DIGITS = 18


@transform
def to_decimal(text: str) -> int | Decimal | None:
    """v2 NM (chapter 2A.47) to a JSON number: integers stay integers, and a number with a fraction
    keeps its digits (``0.90`` is a Decimal that gateway/fhirjson.py writes as ``0.90``)."""
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    if "." not in text and len(text.lstrip("+-")) <= _INT_DIGITS:
        return int(text)
    return Decimal(text)  # a longer integer too: orjson writes 64-bit ints only, int() takes 4,300 digits


@transform
def to_integer(text: str) -> int | None:
    value = to_decimal(text)
    return value if isinstance(value, int) and -(2**31) <= value < 2**31 else None


@transform
def to_positive_int(text: str) -> int | None:
    value = to_integer(text)
    return value if value is not None and value > 0 else None


@transform
def oid_to_urn(text: str) -> str | None:
    """An ISO OID (HD.2 with HD.3 "ISO") as a FHIR system URI."""
    return f"urn:oid:{text}" if re.fullmatch(r"[0-2](\.(0|[1-9]\d*))+", text) else None


@transform
def uuid_to_urn(text: str) -> str | None:
    return (
        f"urn:uuid:{text.lower()}"
        if re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", text)
        else None
    )


@transform
def uri(text: str) -> str | None:
    """The text when it already is an absolute URI (HD.2 of type "URI")."""
    return text if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", text) else None
