"""Producers: the part of a compiled rule that turns a v2 element into a FHIR value (a datatype
map, a transform of the text, a table lookup, a constant, or a map chosen by another field)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.convert import functions
from gateway.convert.model.context import Context
from gateway.convert.model.paths import SourcePath, TargetPath
from gateway.convert.model.tables import Table
from gateway.convert.model.values import choice_suffix, is_empty
from gateway.hl7.message import Element

Build = Callable[[Element, Context, "Table | None"], Any]
Producer = Callable[["Element | None", Context], Any]


@dataclass(frozen=True, slots=True)
class DatatypeMap:
    """``CX[Identifier]``: builds ``fhir_type`` from a v2 ``datatype`` value; ``choice`` maps return
    (type, value); a map whose ``fhir_type`` is a resource makes that resource and returns a Reference."""

    name: str
    datatype: str
    fhir_type: str
    build: Build
    accepts_table: bool
    choice: bool = False
    #: False when the map reads more than its value (then it is not memoized).
    pure: bool = True
    #: True when the map makes a resource (Practitioner from XCN) and gives a Reference to it.
    makes_resource: bool = False


def constant_producer(constant: Callable[[], Any], only_when_valued: bool) -> Producer:
    if not only_when_valued:
        return lambda el, ctx: constant()
    # With `from`, the constant is written only when the source is valued.
    return lambda el, ctx: constant() if functions.text_of(el) else None


def plain_producer(
    transform: Callable[..., Any] | None, table: Table | None, zoned: bool, reads: str = "", source: str = ""
) -> Producer:
    """The text of the element, translated by ``table``, then transformed (with the sender's zone
    for date transforms). A transform that ``reads`` something (a date) and finds none notes it."""

    def produce(el: Element | None, ctx: Context) -> Any:
        text = functions.text_of(el)
        if not text:
            return None
        if table is not None:
            mapped = table.lookup(text)
            if mapped is None:
                ctx.note(f"code {text!r} is not in table {table.name}; element left out")
                return None
            text = mapped["code"]
        if transform is None:
            return text
        value = transform(text, ctx.tz) if zoned else transform(text)
        if value is None and reads:
            ctx.note(f"{source} is not {reads}; left out")
        return value

    return produce


def wrap_choice(dmap: DatatypeMap, target: TargetPath, where: str, table: Table | None, error: type) -> Producer:
    """The datatype map as a producer; for a choice element ``value[x]`` the value carries its type."""
    build = dmap.build
    if not target.is_choice:
        if dmap.choice:
            raise error(where, f"{dmap.name} makes a choice of types; write it to an element[x]")
        return lambda el, ctx: build(el, ctx, table) if el else None
    if dmap.choice:
        return lambda el, ctx: build(el, ctx, table) if el else None
    suffix = "Reference" if dmap.makes_resource else choice_suffix(dmap.fhir_type)

    def produce(el: Element | None, ctx: Context) -> Any:
        value = build(el, ctx, table) if el else None
        return None if is_empty(value) else (suffix, value)

    return produce


class _Dispatch:
    """Chooses a datatype map by the text at ``selector`` (e.g. OBX-2 value type, chapter 7.4.2.2)."""

    __slots__ = ("selector", "choices", "source")

    def __init__(self, selector: SourcePath, choices: dict[str, Producer], source: str):
        self.selector = selector
        self.choices = choices
        self.source = source  # the field read, for notes ("OBX-5")

    def __call__(self, element: Element | None, ctx: Context) -> Any:
        segment = ctx.segment
        kind = functions.text_of(segment.field(self.selector.field)) if segment is not None else ""
        produce = self.choices.get(kind)
        if produce is None:
            if element:
                ctx.note(f"value type {kind!r} is not mapped; value left out")
            return None
        value = produce(element, ctx)
        if value is None and functions.text_of(element):
            # A value its type cannot read (NM "1,5", a DTM with month 13): kept as text, never lost.
            ctx.note(f"{self.source} is not a valid {kind}; kept as text")
            return "String", functions.text_of(element)
        return value


def dispatch_producer(selector: SourcePath, choices: dict[str, Producer], source: str) -> Producer:
    return _Dispatch(selector, choices, source)
