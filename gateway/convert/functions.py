"""Named functions a mapping may call. Mappings stay data: they name these, never contain code.

Three kinds, each in its own registry, checked at load:

* ``transform: name`` turns the text of a value into a FHIR primitive (``dtm_to_date``);
* ``function: name`` (or a datatype map implemented in Python) builds a FHIR value from a v2
  element: ``(element, context, table) -> value | None``;
* ``when: {name: ...}`` conditions test v2 values: ``(element, *arguments) -> bool``.

A function returns None (never "", {} or []) when it has nothing to say.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from gateway.hl7 import dtm
from gateway.convert.context import Context
from gateway.convert.tables import Table
from gateway.hl7.message import Element

Transform = Callable[[str], Any]
Builder = Callable[[Element | None, Context, Table | None], Any]
Condition = Callable[..., bool]

TRANSFORMS: dict[str, Transform] = {}
#: Transforms that also take the sender's time zone: ``fn(text, tz)``.
ZONED_TRANSFORMS: set[str] = set()
BUILDERS: dict[str, Builder] = {}
CONDITIONS: dict[str, Condition] = {}
#: Conditions that look at a whole field, every repetition: ``fn(raw_field, repetition_separator)``.
FIELD_CONDITIONS: set[str] = set()


def transform(fn: Transform) -> Transform:
    TRANSFORMS[fn.__name__] = fn
    return fn


#: What a builder reads besides its element, its separators and its table: "segment" (the segment
#: being mapped) or "message" (anything in the message). Results are memoized only on what they read.
BUILDER_READS: dict[str, str] = {}
#: Fields a builder reads besides its element ("OBX-6"), for the unused-field report.
BUILDER_FIELDS: dict[str, tuple[str, ...]] = {}


def builder(fn: Builder | None = None, *, reads: str = "element", fields: tuple[str, ...] = ()) -> Any:
    """Register a builder; ``reads`` says how far beyond its element it looks, ``fields`` which
    fields of the segment (or message) it reads there."""
    if reads not in ("element", "segment", "message"):
        raise ValueError(f"reads is element, segment or message, not {reads!r}")

    def register(fn: Builder) -> Builder:
        BUILDERS[fn.__name__] = fn
        BUILDER_READS[fn.__name__] = reads
        BUILDER_FIELDS[fn.__name__] = fields
        return fn

    return register(fn) if fn is not None else register


def condition(name: str, whole_field: bool = False) -> Callable[[Condition], Condition]:
    def register(fn: Condition) -> Condition:
        CONDITIONS[name] = fn
        if whole_field:
            FIELD_CONDITIONS.add(name)
        return fn

    return register


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

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")


@transform
def to_decimal(text: str) -> int | float | None:
    """v2 NM (chapter 2A.47) to a JSON number; integers stay integers. Trailing zeros are not kept."""
    text = text.strip()
    if not _NUMBER.match(text):
        return None
    if "." not in text:
        return int(text)
    return float(text)


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
    return f"urn:uuid:{text.lower()}" if re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", text) else None


@transform
def uri(text: str) -> str | None:
    """The text when it already is an absolute URI (HD.2 of type "URI")."""
    return text if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", text) else None


# --- conditions (arguments arrive normalized: text as str, lists as frozensets, lengths as int) --

@condition("valued")
def _valued(element: Element) -> bool:
    return bool(element) and bool(element.value.strip())


@condition("not_valued")
def _not_valued(element: Element) -> bool:
    return not _valued(element)


@condition("equals")
def _equals(element: Element, value: str) -> bool:
    return text_of(element) == value


@condition("not_equals")
def _not_equals(element: Element, value: str) -> bool:
    return text_of(element) != value


@condition("in")
def _in(element: Element, values: frozenset[str]) -> bool:
    return text_of(element) in values


@condition("not_in")
def _not_in(element: Element, values: frozenset[str]) -> bool:
    return text_of(element) not in values


@condition("longer_than")
def _longer_than(element: Element, length: int) -> bool:
    return len(text_of(element)) > length


@condition("in_table")
def _in_table(element: Element, table: Table) -> bool:
    """The code is one the table maps (``{in_table: [MSH-9.2, Event_EncounterStatus]}``)."""
    return table.lookup(text_of(element)) is not None


@condition("not_in_table")
def _not_in_table(element: Element, table: Table) -> bool:
    return table.lookup(text_of(element)) is None


def _count_repetitions(raw: str, separator: str) -> int:
    return sum(1 for rep in raw.split(separator) if rep and rep != '""') if raw else 0


@condition("repeated", whole_field=True)
def _repeated(raw: str, separator: str) -> bool:
    """The field holds more than one (non-empty) repetition."""
    return _count_repetitions(raw, separator) > 1


@condition("single", whole_field=True)
def _single(raw: str, separator: str) -> bool:
    """The field holds at most one (non-empty) repetition."""
    return _count_repetitions(raw, separator) <= 1


#: Each condition's extra argument and how to normalize it at load (None: no argument).
CONDITION_ARGUMENT: dict[str, Callable[[Any], Any] | None] = {
    "valued": None,
    "not_valued": None,
    "equals": str,
    "not_equals": str,
    "in": lambda values: frozenset(str(v) for v in values),
    "not_in": lambda values: frozenset(str(v) for v in values),
    "longer_than": int,
    "in_table": str,  # the table's name; the compiler resolves it
    "not_in_table": str,
    "repeated": None,
    "single": None,
}


# The element builders live in their own module; importing it registers them in BUILDERS.
from gateway.convert import builders  # noqa: E402,F401
from gateway.convert import builders_values  # noqa: E402,F401
