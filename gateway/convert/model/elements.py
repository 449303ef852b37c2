"""An Element that splits itself once: the maps read many components of the same value.

``gateway.hl7.message.Element`` re-splits its text on every ``el[n]``; a datatype map reading ten
components of a CX would split it ten times. ``CachedElement`` splits on first use and keeps the
children it hands out, and is otherwise the same Element (same text, same unescaping, same
``bool``).
"""

from __future__ import annotations

from gateway.hl7.escape import Separators, unescape
from gateway.hl7.message import Element


class CachedElement(Element):
    __slots__ = ("_kids",)

    def __init__(self, raw: str, seps: Separators, depth: int):
        self.raw = raw
        self._seps = seps
        self._depth = depth
        self._kids: list[CachedElement] | None = None

    def __getitem__(self, n: int) -> CachedElement:
        kids = self._kids
        if kids is None:
            depth = self._depth
            if depth >= 2:
                kids = self._kids = [self]
            else:
                seps = self._seps
                sep = seps.component if depth == 0 else seps.subcomponent
                kids = self._kids = [CachedElement(part, seps, depth + 1) for part in self.raw.split(sep)]
        if 0 < n <= len(kids):
            return kids[n - 1]
        if n < 1:
            raise IndexError("HL7 positions start at 1")
        return CachedElement("", self._seps, min(self._depth + 1, 3))

    @property
    def first(self) -> str:
        raw = self.raw
        depth = self._depth
        if depth == 0:
            raw = raw.split(self._seps.component, 1)[0]
        if depth <= 1:
            raw = raw.split(self._seps.subcomponent, 1)[0]
        return unescape(raw, self._seps)

    def __bool__(self) -> bool:
        raw = self.raw
        return bool(raw) and raw != '""'


def cached(element: Element, seps: Separators) -> CachedElement:
    """The same value as a CachedElement (a repetition, depth 0)."""
    return element if isinstance(element, CachedElement) else CachedElement(element.raw, seps, 0)
