"""Batch files for tests: hypothesis strategies for messages and the shapes a batch file takes,
a writer that records where each message lands, and a stream whose reads return short pieces."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from hypothesis import strategies as st

#: Field separator and encoding characters senders use; the reader must read each message with its own.
DIALECTS = [("|", "^~\\&"), ("|", "^~\\&#"), ("#", "^~\\&"), ("!", "@%\\*")]
_TEXT = st.text(
    alphabet=st.characters(
        # letters, digits, marks, spaces, and punctuation that no dialect above uses as a delimiter
        whitelist_categories=("Lu", "Ll", "Nd", "Lo", "Zs"),
        whitelist_characters=".,-_:/()=+'\"?;[]{}",
        blacklist_characters="\r\n\x0b\x1c\x1a\x85\u2028\u2029",
    ),
    max_size=12,
)
SEGMENT_NAMES = st.sampled_from(["PID", "PV1", "OBX", "NTE", "EVN", "ZX1", "AL1", "OBR"])
LINE_ENDS = st.sampled_from([b"\r", b"\n", b"\r\n"])


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    """A message as its segments (no terminators): an MSH with a unique-looking control id and
    a few segments of arbitrary field text in one dialect."""
    sep, enc = draw(st.sampled_from(DIALECTS))
    comp = enc[0]
    control = draw(st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=10))
    head = sep.join(["MSH", enc, draw(_TEXT), "FAC", "RCV", "RFAC", "20240101120000", "", f"ADT{comp}A01", control])
    head += sep + "P" + sep + "2.5"
    segments = [head]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(SEGMENT_NAMES)
        fields = draw(st.lists(_TEXT, max_size=5))
        segments.append(sep.join([name, *fields]) if fields else name)
    return [s.encode("utf-8") for s in segments]


@dataclass
class Written:
    """A stream and what the reader must find in it."""

    data: bytes
    #: (offset, end, raw) of each message, in order.
    messages: list[tuple[int, int, bytes]] = field(default_factory=list)
    #: (messages read, BTS-1 written or None) per batch, in order; the run outside BHS batches included.
    batches: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class Shape:
    envelope: str  # "none" | "bhs" | "fhs" | "fhs-only"
    line_ends: list[bytes]  # cycled through, segment by segment
    bom: bool = False
    framed: bool = False
    blank_lines: bool = False
    blank: bytes = b""  # what a blank line holds: nothing, or white space

    def end(self, n: int) -> bytes:
        return self.line_ends[n % len(self.line_ends)]


class Writer:
    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.out = io.BytesIO()
        self.written = Written(b"")
        self.lines = 0

    def raw(self, data: bytes) -> None:
        self.out.write(data)

    def line(self, segment: bytes) -> None:
        self.out.write(segment + self.shape.end(self.lines))
        self.lines += 1

    def message(self, segments: list[bytes]) -> None:
        if self.shape.blank_lines:
            # the previous line's end again: a CR then an LF would be one CRLF, not a blank line
            self.raw(self.shape.blank + self.shape.end(max(self.lines - 1, 0)))
        if self.shape.framed:
            self.raw(b"\x0b")
        offset = self.out.tell()
        for segment in segments:
            self.line(segment)
        if self.shape.framed:
            self.raw(b"\x1c\r")
        self.written.messages.append((offset, self.out.tell(), b"".join(s + b"\r" for s in segments)))

    def finish(self) -> Written:
        self.written.data = self.out.getvalue()
        return self.written


def write_batch_file(batches: list[list[list[bytes]]], shape: Shape, *, declared: list[int] | None = None) -> Written:
    """``batches`` of messages written in ``shape``; ``declared`` overrides BTS-1 per batch."""
    w = Writer(shape)
    if shape.bom:
        w.raw(b"\xef\xbb\xbf")
    if shape.envelope in ("fhs", "fhs-only"):
        w.line(b"FHS|^~\\&|SEND|SFAC|RECV|RFAC|20240101||file-name|comment|F0001")
    if shape.envelope in ("none", "fhs-only"):
        flat = [m for b in batches for m in b]
        for m in flat:
            w.message(m)
        if flat:
            w.written.batches.append((len(flat), None))
    else:
        for n, batch in enumerate(batches):
            w.line(f"BHS|^~\\&|SEND|SFAC|RECV|RFAC|20240101||||B{n:04d}".encode())
            for m in batch:
                w.message(m)
            count = declared[n] if declared is not None else len(batch)
            w.line(f"BTS|{count}".encode())
            w.written.batches.append((len(batch), count))
    if shape.envelope in ("fhs", "fhs-only"):
        w.line(f"FTS|{len(w.written.batches)}".encode())
    return w.finish()


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    return Shape(
        envelope=draw(st.sampled_from(["none", "bhs", "fhs", "fhs-only"])),
        line_ends=draw(st.lists(LINE_ENDS, min_size=1, max_size=3)),
        bom=draw(st.booleans()),
        framed=draw(st.booleans()),
        blank_lines=draw(st.booleans()),
        blank=draw(st.sampled_from([b"", b" ", b"\t \t", b"\x1a"])),
    )


batch_lists = st.lists(st.lists(messages(), max_size=4), min_size=1, max_size=4)


class ShortReads(io.RawIOBase):
    """A stream whose read(n) returns at most the next of ``sizes`` bytes (cycled), as a pipe or a
    socket may: the reader must not take a short read for the end."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.at = 0
        self.sizes = [s for s in sizes if s > 0] or [1 << 16]
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = self.sizes[self.calls % len(self.sizes)]
        self.calls += 1
        if n is not None and n >= 0:
            size = min(size, n)
        piece = self.data[self.at : self.at + size]
        self.at += len(piece)
        return piece
