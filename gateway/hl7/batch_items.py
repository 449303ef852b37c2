"""What the batch reader (gateway.hl7.batch) yields while it reads a file: envelopes, messages,
rejected pieces and the counts of each batch and file (HL7 v2 chapter 2.10.3, segments 2.15).

Offsets are byte offsets in the (decompressed) stream; ``[offset, end)`` holds the piece. Header
field values are kept raw, still escaped, as ack.AckHeader keeps the MSH fields it echoes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import ParseError
from gateway.hl7.escape import DEFAULT_SEPARATORS, Separators
from gateway.hl7.message import read_separators

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """An FHS or BHS segment (chapter 2.15: FHS-n and BHS-n have the same meaning for n <= 12)."""

    segment: str  # "FHS" | "BHS"
    raw: bytes  # the segment as read, without its terminator
    sending_application: str  # FHS/BHS-3
    sending_facility: str  # -4
    receiving_application: str  # -5
    receiving_facility: str  # -6
    created: str  # -7 (DTM)
    control_id: str  # -11: file or batch control id
    reference: str  # -12: the control id of the file or batch this one answers (acknowledgements)
    offset: int
    encoding_characters: str = DEFAULT_SEPARATORS.encoding_characters  # -2
    field_separator: str = DEFAULT_SEPARATORS.field  # -1
    name: str = ""  # -9: file or batch name/id/type
    comment: str = ""  # -10

    @property
    def separators(self) -> Separators:
        """The separators the segment declares (the defaults when they are unreadable)."""
        try:
            return read_separators(f"MSH{self.field_separator}{self.encoding_characters}")
        except ParseError:
            return DEFAULT_SEPARATORS


def parse_header(line: bytes, offset: int) -> BatchHeader:
    """A BatchHeader of an FHS/BHS ``line`` (no terminator; it starts with the segment name and a
    delimiter, which the reader checked)."""
    text = line.decode("utf-8", errors="replace")
    sep = text[3]
    # fields[n] is FHS/BHS-n: field 1 is the separator itself (as for MSH, chapter 2.14.9.1).
    fields = ["", sep, *text[4:].split(sep)]

    def at(n: int) -> str:
        value = fields[n] if n < len(fields) else ""
        return value if value.isprintable() else _CONTROL.sub("", value)

    return BatchHeader(
        segment=text[:3],
        raw=line,
        sending_application=at(3),
        sending_facility=at(4),
        receiving_application=at(5),
        receiving_facility=at(6),
        created=at(7),
        control_id=at(11),
        reference=at(12),
        offset=offset,
        encoding_characters=at(2),
        field_separator=sep,
        name=at(9),
        comment=at(10),
    )


@dataclass(frozen=True, slots=True)
class ReadMessage:
    """One message: ``raw`` is its segments joined and ended by CR (line ends normalised, blank
    lines dropped; no framing, no BOM)."""

    raw: bytes
    offset: int  # where its MSH starts
    end: int  # after its last segment's terminator (after the MLLP end block when framed)
    batch: int  # number of its BHS batch in the stream (1, 2, ...); 0 outside any BHS batch
    index: int  # 1-based position in its batch, counting messages and counted rejected pieces


@dataclass(frozen=True, slots=True)
class RejectedPiece:
    """Bytes that are not a message the reader can hand on. ``reason`` says where and what, never
    the content (it may hold PHI). ``raw`` is the piece (its first 64 KiB when it is oversized).

    A piece that looks like (part of) a message, i.e. it starts with a segment, counts in its
    batch like a message (``index`` > 0); text that is not HL7 at all has ``index`` 0.
    """

    offset: int
    end: int
    reason: str
    raw: bytes
    batch: int = 0
    index: int = 0

    @property
    def counted(self) -> bool:
        return self.index > 0


@dataclass(frozen=True, slots=True)
class FileStart:
    header: BatchHeader  # the FHS


@dataclass(frozen=True, slots=True)
class BatchStart:
    """A batch begins: at a BHS, or (``header`` None, ``batch`` 0) at a message outside any BHS."""

    header: BatchHeader | None
    batch: int


@dataclass(frozen=True, slots=True)
class BatchEnd:
    """A batch ends: at its BTS (``declared`` = BTS-1), or without one (``declared`` None) at the
    next BHS/FHS/FTS or the end of the stream; ``trailer_missing`` when a BHS batch had no BTS."""

    batch: int
    header: BatchHeader | None
    declared: int | None
    read: int  # messages + counted rejected pieces read in the batch
    trailer_missing: bool = False

    @property
    def mismatch(self) -> bool:
        """BTS-1 says another number of messages than were read."""
        return self.declared is not None and self.declared != self.read


@dataclass(frozen=True, slots=True)
class FileEnd:
    """A file ends: at its FTS (``declared`` = FTS-1, the number of batches), at the next FHS or at
    the end of the stream. ``batches`` counts the batches read in it, a run of messages outside any
    BHS counting as one. The last item of every read is a FileEnd."""

    header: BatchHeader | None
    declared: int | None
    batches: int
    trailer_missing: bool = False

    @property
    def mismatch(self) -> bool:
        """FTS-1 says another number of batches than were read."""
        return self.declared is not None and self.declared != self.batches


Item = FileStart | BatchStart | ReadMessage | RejectedPiece | BatchEnd | FileEnd
