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

Memory is bounded in bytes, not entries: the stores of one compiled mapping set (thousands of maps)
share a ``MemoBudget``; when what they hold passes it, they all start over (hot values come straight
back). A value whose text is longer than ``MAX_MEMO_TEXT`` (a report's text, a base64 attachment)
is not memoized at all: it hardly repeats, and keeping it would cost its size several times over
(key, serialized value) for as long as the worker runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from gateway import fhirjson
from gateway.convert.model.context import Context
from gateway.convert.model.elements import CachedElement
from gateway.convert.model.tables import Table
from gateway.hl7.message import Segment

#: Bytes (key texts and serialized values, about) the memo stores of one mapping set hold at most.
MEMO_BYTES = 64 * 1024 * 1024
#: Longest text (a value, a segment with the segments its map includes) whose result is memoized.
MAX_MEMO_TEXT = 4096
#: What a memo entry costs besides its texts (dict slot, key tuple and strings, Entry, bytes), about.
_ENTRY_OVERHEAD = 400

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
            self.payload = fhirjson.dumps_kept((value, made))

    @property
    def size(self) -> int:
        """Bytes of the value, about."""
        if self.payload is not None:
            return len(self.payload)
        return len(self.scalar) if isinstance(self.scalar, str) else 8

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


class MemoBudget:
    """The memo stores of one compiled mapping set and the bytes they hold; past ``limit`` bytes
    they are all cleared. Thread-safe: worker threads share the compiled maps."""

    def __init__(self, limit: int = MEMO_BYTES):
        self.limit = limit
        self.used = 0
        self.stores: list[dict[tuple[Any, ...], Entry]] = []
        self._lock = threading.Lock()

    def new_store(self) -> dict[tuple[Any, ...], Entry]:
        store: dict[tuple[Any, ...], Entry] = {}
        self.stores.append(store)
        return store

    def put(self, store: dict[tuple[Any, ...], Entry], key: tuple[Any, ...], entry: Entry, text_size: int) -> None:
        """Keep ``entry`` under ``key``; ``text_size``: the length of the key's texts."""
        size = text_size + entry.size + _ENTRY_OVERHEAD
        with self._lock:
            if self.used + size > self.limit:
                self._clear()
            self.used += size
            store[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        for store in self.stores:
            store.clear()
        self.used = 0


def memoized(build: Build, budget: MemoBudget) -> Build:
    """``build`` memoized in a store of ``budget``."""
    store = budget.new_store()

    def build_memoized(element: Any, ctx: Context, table: Table | None) -> Any:
        if not isinstance(element, CachedElement) or len(element.raw) > MAX_MEMO_TEXT:
            return build(element, ctx, table)
        key = (element.raw, element._depth, ctx.memo_key, id(table))
        hit = store.get(key)
        if hit is not None:
            return hit.replay(ctx)
        notes_mark, made_mark = len(ctx.notes), len(ctx.made)
        value = build(element, ctx, table)
        budget.put(store, key, Entry(ctx, value, notes_mark, made_mark), len(element.raw))
        return value

    return build_memoized


def other_fields_key(ctx: Context, others: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    """The text of the fields of other segments a map reads (ORC-2 beside an OBR, MSH-9)."""
    key: tuple[Any, ...] = ()
    for name, field in others:
        other = ctx.other_segment(name)
        key += (other.field_raw(field) if other is not None else None,)
    return key


def text_size(key: tuple[Any, ...]) -> int:
    """The length of the texts in a memo key."""
    return sum(len(part) for part in key if isinstance(part, str))


def memoized_segment(
    run: Callable[[Segment, Context], dict[str, Any]],
    others: tuple[tuple[str, int], ...],
    budget: MemoBudget,
) -> Callable[[Segment, Context], dict[str, Any]]:
    """A segment map's elements, memoized on the segment's text, the separators and time zone, and
    the fields of other segments the map reads (``others``)."""
    store = budget.new_store()

    def run_memoized(seg: Segment, ctx: Context) -> dict[str, Any]:
        key: tuple[Any, ...] = (seg.raw, ctx.memo_key)
        if others:
            key += other_fields_key(ctx, others)
        size = text_size(key)
        if size > MAX_MEMO_TEXT:
            return run(seg, ctx)
        hit = store.get(key)
        if hit is not None:
            return hit.replay(ctx)  # type: ignore[no-any-return]
        notes_mark, made_mark = len(ctx.notes), len(ctx.made)
        value = run(seg, ctx)
        budget.put(store, key, Entry(ctx, value, notes_mark, made_mark), size)
        return value

    return run_memoized
