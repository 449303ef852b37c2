"""Named conditions (``when: {name: ...}``): tests of v2 values. Arguments arrive normalized at
load: text as str, lists as frozensets, lengths as int."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.convert.functions.registry import condition
from gateway.convert.functions.text import oid_to_urn, text_of, uri, uuid_to_urn
from gateway.convert.model.tables import Table
from gateway.hl7.message import Element


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


@condition("universal_id")
def _universal_id(element: Element) -> bool:
    """A universal id that can be a system or an identifier value: an ISO OID, a UUID or an
    absolute URI (HD.2 of ISO, UUID or URI type, chapter 2A.33), not a malformed one."""
    text = text_of(element)
    return bool(text) and any(f(text) is not None for f in (oid_to_urn, uuid_to_urn, uri))


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
    "universal_id": None,
    "longer_than": int,
    "in_table": str,  # the table's name; the compiler resolves it
    "not_in_table": str,
    "repeated": None,
    "single": None,
}
