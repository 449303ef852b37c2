"""Memoized maps: the same v2 value converts to the same FHIR value.

Feeds repeat values constantly (facility and provider ids, codes, units, the same patient's PID in
every result), and a datatype map is a pure function of the value's text, its separators, the time
zone that dates without an offset are read in, and the table it is given. So each compiled map keeps
the outputs it made, keyed on exactly those, and hands out copies. Notes the map made (unmapped
codes) and resources it made (a Practitioner from an XCN) are replayed on a hit. A datatype map
that uses a function reading beyond its value, or a segment map with one reading beyond its
segments (``@builder(reads=...)``), is not memoized.

An entry keeps its value serialized (orjson), so that a hit costs one C-level parse, which is also
the copy that keeps callers from changing what the memo holds.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from gateway import fhirjson
from gateway.convert.model.context import Context
from gateway.convert.model.elements import CachedElement
from gateway.convert.model.tables import Table
from gateway.hl7.message import Segment

#: Entries per map; when full the map starts over (cheap, and hot values come straight back).
MEMO_SIZE = 20_000

Build = Callable[[Any, Context, "Table | None"], Any]
_SCALARS = (str, int, float, Decimal, bool, type(None))


class Entry:
    """A memoized value with the notes and made resources to replay."""

    __slots__ = ("choice", "payload", "scalar", "notes")

    def __init__(self, ctx: Context, value: Any, notes_mark: int, made_mark: int):
        made = ctx.made[made_mark:]
        self.notes = tuple(ctx.notes[notes_mark:])
        self.choice: str | None = None
        self.scalar: Any = None
        if isinstance(value, tuple):  # a choice: (FHIR type, value)
            self.choice, value = value
        if not made and isinstance(value, _SCALARS):
            self.payload: bytes | None = None
            self.scalar = value
        else:
            self.payload = fhirjson.dumps((value, made))

    def replay(self, ctx: Context) -> Any:
        if self.notes:
            ctx.notes.extend(self.notes)
        if self.payload is None:
            value = self.scalar
        else:
            value, made = fhirjson.loads(self.payload)
            if made:
                ctx.made.extend(made)
        return value if self.choice is None else (self.choice, value)


def memoized(build: Build, stores: list[dict[tuple[Any, ...], Any]], size: int = MEMO_SIZE) -> Build:
    """``build`` memoized; its store is added to ``stores`` so that an owner can clear it."""
    store: dict[tuple[Any, ...], Entry] = {}
    stores.append(store)

    def build_memoized(element: Any, ctx: Context, table: Table | None) -> Any:
        if not isinstance(element, CachedElement):
            return build(element, ctx, table)
        key = (element.raw, element._depth, ctx.memo_key, id(table))
        hit = store.get(key)
        if hit is not None:
            return hit.replay(ctx)
        notes_mark, made_mark = len(ctx.notes), len(ctx.made)
        value = build(element, ctx, table)
        if len(store) >= size:
            store.clear()
        store[key] = Entry(ctx, value, notes_mark, made_mark)
        return value

    return build_memoized


def other_fields_key(ctx: Context, others: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    """The text of the fields of other segments a map reads (ORC-2 beside an OBR, MSH-9)."""
    key: tuple[Any, ...] = ()
    for name, field in others:
        other = ctx.other_segment(name)
        key += (other.field_raw(field) if other is not None else None,)
    return key


def memoized_segment(
    run: Callable[[Segment, Context], dict[str, Any]],
    others: tuple[tuple[str, int], ...],
    stores: list[dict[tuple[Any, ...], Any]],
    size: int = MEMO_SIZE,
) -> Callable[[Segment, Context], dict[str, Any]]:
    """A segment map's elements, memoized on the segment's text, the separators and time zone, and
    the fields of other segments the map reads (``others``)."""
    store: dict[tuple[Any, ...], Entry] = {}
    stores.append(store)

    def run_memoized(seg: Segment, ctx: Context) -> dict[str, Any]:
        key: tuple[Any, ...] = (seg.raw, ctx.memo_key)
        if others:
            key += other_fields_key(ctx, others)
        hit = store.get(key)
        if hit is not None:
            return hit.replay(ctx)  # type: ignore[no-any-return]
        notes_mark, made_mark = len(ctx.notes), len(ctx.made)
        value = run(seg, ctx)
        if len(store) >= size:
            store.clear()
        store[key] = Entry(ctx, value, notes_mark, made_mark)
        return value

    return run_memoized
