"""The registries of named functions a mapping may call, and the decorators that fill them.

Three kinds, each in its own registry, checked at load (gateway/convert/functions/ holds them):

* ``transform: name`` turns the text of a value into a FHIR primitive (``dtm_to_date``);
* ``function: name`` (or a datatype map implemented in Python) builds a FHIR value from a v2
  element: ``(element, context, table) -> value | None``;
* ``when: {name: ...}`` conditions test v2 values: ``(element, *arguments) -> bool``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from gateway.convert.model.context import Context
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element

Transform = Callable[[str], Any]
Builder = Callable[[Element | None, Context, Table | None], Any]
Condition = Callable[..., bool]

TRANSFORMS: dict[str, Transform] = {}
#: Transforms that also take the sender's time zone: ``fn(text, tz)``.
ZONED_TRANSFORMS: set[str] = set()
#: Transforms whose None means the text is not what they read: name -> what ("a date"). Such a
#: value is noted (the segment, the field, what it should have been), never silently dropped.
READS: dict[str, str] = {}
BUILDERS: dict[str, Builder] = {}
CONDITIONS: dict[str, Condition] = {}
#: Conditions that look at a whole field, every repetition: ``fn(raw_field, repetition_separator)``.
FIELD_CONDITIONS: set[str] = set()
#: What a builder reads besides its element, its separators and its table: "segment" (the segment
#: being mapped) or "message" (anything in the message). Results are memoized only on what they read.
BUILDER_READS: dict[str, str] = {}
#: Fields a builder reads besides its element ("OBX-6"), for the unused-field report.
BUILDER_FIELDS: dict[str, tuple[str, ...]] = {}


def transform(fn: Transform) -> Transform:
    TRANSFORMS[fn.__name__] = fn
    return fn


@overload
def builder(fn: Builder, *, reads: str = "element", fields: tuple[str, ...] = ()) -> Builder: ...


@overload
def builder(
    fn: None = None, *, reads: str = "element", fields: tuple[str, ...] = ()
) -> Callable[[Builder], Builder]: ...


def builder(
    fn: Builder | None = None, *, reads: str = "element", fields: tuple[str, ...] = ()
) -> Builder | Callable[[Builder], Builder]:
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
