"""A lazy HL7 v2 message: segments are split once, fields only when read, values unescaped on read.

Positions are 1-based as in the standard: ``PID-3`` is field 3, ``PID-3.4.2`` its fourth component's
second subcomponent. For MSH, field 1 is the field separator and field 2 the encoding characters
(chapter 2.14.9), so the raw split is shifted by one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from gateway.errors import ParseError
from gateway.hl7.escape import Separators, unescape

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_LINE_END = re.compile(r"[\r\n]")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_HEADER_SEGMENTS = ("MSH", "FHS", "BHS")


class Element:
    """One repetition, component or subcomponent; ``el[n]`` descends one level, ``el.value`` reads it."""

    __slots__ = ("raw", "_seps", "_depth")

    def __init__(self, raw: str, seps: Separators, depth: int):
        self.raw = raw
        self._seps = seps
        self._depth = depth  # 0 repetition, 1 component, 2 subcomponent

    def __getitem__(self, n: int) -> Element:
        if n < 1:
            raise IndexError("HL7 positions start at 1")
        if self._depth >= 2:
            return self if n == 1 else Element("", self._seps, 3)
        sep = self._seps.component if self._depth == 0 else self._seps.subcomponent
        if sep not in self.raw:
            return self._child(self.raw if n == 1 else "")
        parts = self.raw.split(sep)
        return self._child(parts[n - 1] if n <= len(parts) else "")

    def _child(self, raw: str) -> Element:
        return Element(raw, self._seps, self._depth + 1)

    def parts(self) -> list[Element]:
        """The children at the next level (components of a repetition, subcomponents of a component)."""
        if self._depth >= 2:
            return [self]
        sep = self._seps.component if self._depth == 0 else self._seps.subcomponent
        return [self._child(p) for p in self.raw.split(sep)]

    @property
    def value(self) -> str:
        """The unescaped text of this element, separators of deeper levels included as written."""
        return unescape(self.raw, self._seps)

    @property
    def first(self) -> str:
        """Unescaped text of the first leaf (for example a CWE's code or an HD's namespace)."""
        el = self
        while el._depth < 2:
            el = el[1]
        return el.value

    def __bool__(self) -> bool:
        return bool(self.raw) and self.raw != '""'

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Element({self.raw!r})"


class Segment:
    __slots__ = ("name", "raw", "_seps", "_fields")

    def __init__(self, raw: str, seps: Separators):
        self.raw = raw
        self.name = raw[:3]
        self._seps = seps
        self._fields: list[str] | None = None

    def _split(self) -> list[str]:
        if self._fields is None:
            fields = self.raw.split(self._seps.field)
            if self.name in _HEADER_SEGMENTS:
                # MSH-1 is the separator itself, MSH-2 the encoding characters.
                fields = [fields[0], self._seps.field, *fields[1:]]
            self._fields = fields
        return self._fields

    def __len__(self) -> int:
        """Number of fields present (the highest field number)."""
        return len(self._split()) - 1

    def field_raw(self, n: int) -> str:
        fields = self._split()
        return fields[n] if 0 < n < len(fields) else ""

    def repetitions(self, n: int) -> list[Element]:
        raw = self.field_raw(n)
        if not raw:
            return []
        if self.name in _HEADER_SEGMENTS and n <= 2:
            return [Element(raw, self._seps, 2)]
        return [Element(r, self._seps, 0) for r in raw.split(self._seps.repetition)]

    def field(self, n: int) -> Element:
        """The first repetition of field ``n`` (empty element when absent)."""
        reps = self.repetitions(n)
        return reps[0] if reps else Element("", self._seps, 0)

    def get(self, n: int, component: int = 0, subcomponent: int = 0) -> str:
        el = self.field(n)
        if component:
            el = el[component]
            if subcomponent:
                el = el[subcomponent]
        return el.value

    def __repr__(self) -> str:
        return f"Segment({self.raw[:40]!r})"


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed location such as ``PID-3.4.2`` (segment, field, component, subcomponent)."""

    segment: str
    field: int
    component: int = 0
    subcomponent: int = 0

    def __str__(self) -> str:
        text = f"{self.segment}-{self.field}"
        if self.component:
            text += f".{self.component}"
            if self.subcomponent:
                text += f".{self.subcomponent}"
        return text


_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+)(?:\.(\d+))?)?$")


@functools.lru_cache(maxsize=4096)
def parse_path(text: str) -> Path:
    m = _PATH.match(text.strip())
    if not m:
        raise ValueError(f"not an HL7 path: {text!r} (expected e.g. PID-3.4.2)")
    seg, fld, comp, sub = m.groups()
    return Path(seg, int(fld), int(comp or 0), int(sub or 0))


class Message:
    __slots__ = ("separators", "segments", "_by_name")

    def __init__(self, separators: Separators, segments: list[Segment]):
        self.separators = separators
        self.segments = segments
        self._by_name: dict[str, list[Segment]] | None = None

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def _index(self) -> dict[str, list[Segment]]:
        if self._by_name is None:
            index: dict[str, list[Segment]] = {}
            for seg in self.segments:
                index.setdefault(seg.name, []).append(seg)
            self._by_name = index
        return self._by_name

    def segment(self, name: str) -> Segment | None:
        found = self._index().get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Segment]:
        return self._index().get(name, [])

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def get(self, path: str) -> str:
        """Unescaped value at ``path`` in the first such segment, first repetition; "" when absent."""
        p = parse_path(path)
        seg = self.segment(p.segment)
        if seg is None:
            return ""
        return seg.get(p.field, p.component, p.subcomponent)

    # Header shortcuts (chapter 2.14.9).
    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def message_type(self) -> tuple[str, str, str]:
        """(MSH-9.1 code, MSH-9.2 trigger, MSH-9.3 structure)."""
        f = self.msh.field(9)
        return f[1].value, f[2].value, f[3].value

    @property
    def version(self) -> str:
        return self.msh.field(12)[1].value

    @property
    def sender(self) -> str:
        """``application|facility`` from MSH-3 and MSH-4 (first components)."""
        return f"{self.msh.field(3)[1].value}|{self.msh.field(4)[1].value}"

    def to_er7(self, terminator: str = "\r") -> str:
        return terminator.join(seg.raw for seg in self.segments)


def _is_delimiter(char: str) -> bool:
    """Delimiters are printable ASCII punctuation (chapter 2.5.4); control characters would break
    segment splitting and MLLP framing when echoed back in an ACK."""
    return char.isascii() and char.isprintable() and not char.isalnum() and char != " "


def read_separators(header: str) -> Separators:
    """Read the separators from an MSH/FHS/BHS segment's first characters (4 or 5 encoding chars)."""
    header = _LINE_END.split(header, 1)[0]
    if len(header) < 8 or header[:3] not in _HEADER_SEGMENTS:
        raise ParseError("message does not start with an MSH segment", field=None, code="100")
    field_sep = header[3]
    if not _is_delimiter(field_sep):
        raise ParseError(f"invalid field separator {field_sep!r} in MSH-1", field=1, code="102")
    end = header.find(field_sep, 4)
    encoding = header[4:] if end < 0 else header[4:end]
    if (
        len(encoding) not in (4, 5)
        or len(set(encoding + field_sep)) != len(encoding) + 1
        or not all(map(_is_delimiter, encoding))
    ):
        raise ParseError(f"invalid encoding characters {encoding!r} in MSH-2", field=2, code="102")
    return Separators(
        field=field_sep,
        component=encoding[0],
        repetition=encoding[1],
        escape=encoding[2],
        subcomponent=encoding[3],
        truncation=encoding[4] if len(encoding) == 5 else "",
    )


def parse(text: str) -> Message:
    """Split ``text`` (CR, LF or CRLF terminated) into a lazy Message; raises ParseError if the
    header or a segment name is unreadable."""
    # A UTF-8 byte order mark decoded as text (several samples start with one) is not content.
    text = text.lstrip("\ufeff\r\n\t \x0b").rstrip("\r\n\x1c")
    seps = read_separators(text[:32])
    segments: list[Segment] = []
    for line in _SEGMENT_SPLIT.split(text):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != seps.field):
            raise ParseError(
                f"segment {len(segments) + 1} has no valid segment name",
                segment=name if _SEGMENT_NAME.match(name) else "",
                code="100",
            )
        segments.append(Segment(line, seps))
    return Message(seps, segments)
