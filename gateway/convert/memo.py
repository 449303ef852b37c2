"""Memoized datatype maps: the same v2 value converts to the same FHIR value.

Feeds repeat values constantly (facility and provider ids, codes, units, the same patient's PID in
every result), and a datatype map is a pure function of the value's text, its separators and the
table it is given. So each compiled map keeps the outputs it made, keyed on exactly those, and
hands out copies. Notes the map made (unmapped codes) are replayed on a hit. A datatype map that
uses a function reading beyond its value, or a segment map with one reading beyond its segments
(``@builder(reads=...)``), is not memoized.
"""

from __future__ import annotations

from typing import Any, Callable

from gateway.convert.values import clone
from gateway.convert.context import Context
from gateway.convert.elements import CachedElement, memo_key
from gateway.convert.tables import Table
from gateway.hl7.message import Segment

#: Entries per map; when full the map starts over (cheap, and hot values come straight back).
MEMO_SIZE = 20_000

Build = Callable[[Any, Context, "Table | None"], Any]


def memoized(build: Build, stores: list[dict], size: int = MEMO_SIZE) -> Build:
    """``build`` memoized; its store is added to ``stores`` so that an owner can clear it."""
    store: dict[tuple, tuple[Any, tuple[str, ...]]] = {}
    stores.append(store)

    def build_memoized(element: Any, ctx: Context, table: Table | None) -> Any:
        if not isinstance(element, CachedElement):
            return build(element, ctx, table)
        key = (*memo_key(element, ctx.seps_key), id(table))
        hit = store.get(key)
        if hit is not None:
            value, notes = hit
            if notes:
                ctx.notes.extend(notes)
            return clone(value)
        mark = len(ctx.notes)
        value = build(element, ctx, table)
        if len(store) >= size:
            store.clear()
        store[key] = (clone(value), tuple(ctx.notes[mark:]))
        return value

    return build_memoized


def memoized_segment(
    run: Callable[[Segment, Context], dict], others: tuple[str, ...], stores: list[dict], size: int = MEMO_SIZE
) -> Callable[[Segment, Context], dict]:
    """A segment map's elements, memoized on the segment's text, the separators, and the text of the
    other segments the map reads (``others``, e.g. the ORC beside an OBR)."""
    store: dict[tuple, tuple[dict, tuple[str, ...]]] = {}
    stores.append(store)

    def run_memoized(seg: Segment, ctx: Context) -> dict:
        key: tuple = (seg.raw, ctx.seps_key)
        if others:
            key += tuple(getattr(ctx.other_segment(name), "raw", None) for name in others)
        hit = store.get(key)
        if hit is not None:
            value, notes = hit
            if notes:
                ctx.notes.extend(notes)
            return clone(value)
        mark = len(ctx.notes)
        value = run(seg, ctx)
        if len(store) >= size:
            store.clear()
        store[key] = (clone(value), tuple(ctx.notes[mark:]))
        return value

    return run_memoized
