"""Reading the v2 value a rule maps: the first repetition, every repetition, or one repetition seen
as if it were the whole field (for ``each:`` rules that make one FHIR object per repetition)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.convert.model.context import Context
from gateway.convert.model.elements import CachedElement, cached
from gateway.convert.model.paths import SourcePath
from gateway.hl7.message import Element, Segment

#: Segments whose fields 1 and 2 are the separators themselves (chapter 2.14.9.1-2).
HEADERS = ("MSH", "FHS", "BHS")

Pairs = list[tuple["Element | None", "Element | None"]]


class OneRepetition:
    """A segment whose field ``field`` holds only the repetition ``rep`` (duck-types Segment for the
    compiled rules: ``name``, ``raw``, ``field_raw``, ``field``, ``repetitions``)."""

    __slots__ = ("name", "raw", "_segment", "_field", "_rep")

    def __init__(self, segment: Segment, field: int, rep: str):
        self.name = segment.name
        self.raw = segment.raw
        self._segment = segment
        self._field = field
        self._rep = rep

    def field_raw(self, n: int) -> str:
        return self._rep if n == self._field else self._segment.field_raw(n)

    def field(self, n: int) -> Element:
        if n == self._field:
            return CachedElement(self._rep, self._segment._seps, 0)
        return self._segment.field(n)

    def repetitions(self, n: int) -> list[Element]:
        return [self.field(n)] if n == self._field else self._segment.repetitions(n)


def _segment_of(source: SourcePath, owner: str) -> Callable[[Any, Context], Any]:
    if source.segment == owner:
        return lambda segment, ctx: segment
    name = source.segment or ""
    return lambda segment, ctx: ctx.other_segment(name)


def first_source(source: SourcePath, in_segment: bool, owner: str) -> Callable[[Any, Context], Element | None]:
    """The element ``source`` names in the first repetition, or None when it is empty."""
    pick = source.picker()
    if not in_segment:

        def in_value(element: Element, ctx: Context) -> Element | None:
            found = pick(element)
            return found if found else None

        return in_value
    segment_of = _segment_of(source, owner)
    field = source.field

    def in_segment_(segment: Any, ctx: Context) -> Element | None:
        seg = segment_of(segment, ctx)
        if seg is None:
            return None
        raw = seg.field_raw(field)
        if not raw:
            return None
        seps = ctx.message.separators
        if field <= 2 and seg.name in HEADERS:
            found = pick(cached(seg.field(field), seps))
        else:
            found = pick(CachedElement(raw.split(seps.repetition, 1)[0], seps, 0))
        return found if found else None

    return in_segment_


def all_sources(source: SourcePath | None, in_segment: bool, owner: str) -> Callable[[Any, Context, str], Pairs]:
    """(repetition, element to map) pairs for one application of a rule."""
    if not in_segment:
        if source is None:
            return lambda el, ctx, repeats: [(None, el)]
        return lambda el, ctx, repeats: [(None, source.pick(el))]
    if source is None:
        return lambda seg, ctx, repeats: [(None, None)]
    segment_of = _segment_of(source, owner)
    field = source.field
    pick = source.picker()

    def pairs(segment: Any, ctx: Context, repeats: str) -> Pairs:
        seg = segment_of(segment, ctx)
        if seg is None:
            return []
        raw = seg.field_raw(field)
        if not raw:
            return []
        seps = ctx.message.separators
        if field <= 2 and seg.name in HEADERS:
            reps: list[Element] = [cached(seg.field(field), seps)]
        else:
            reps = [CachedElement(r, seps, 0) for r in raw.split(seps.repetition)]
        if repeats == "first":
            reps = reps[:1]
        return [(rep, pick(rep)) for rep in reps]

    return pairs


def repetitions_raw(source: SourcePath, owner: str) -> Callable[[Any, Context], list[str]]:
    """The raw repetitions of the field ``source`` names (for ``each:``), empty ones left out."""
    segment_of = _segment_of(source, owner)
    field = source.field

    def reps(segment: Any, ctx: Context) -> list[str]:
        seg = segment_of(segment, ctx)
        raw = seg.field_raw(field) if seg is not None else ""
        if not raw:
            return []
        return [r for r in raw.split(ctx.message.separators.repetition) if r and r != '""']

    return reps
