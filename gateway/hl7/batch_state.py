"""The batch reader's grammar: what the pieces the scanner finds (gateway.hl7.batch_scan) make.

Chapter 2.10.3: ``[FHS] { [BHS] { MSH ... } [BTS] } [FTS]``. Every envelope segment is optional,
so a run of messages outside any BHS is a batch too (number 0, no header), and a stream without
FHS is a file too (no header). A BTS closes the batch open, a BHS or FHS closes the one before
(``trailer_missing`` when it had a BHS), an FTS closes the batch and the file.

Counts: a batch counts its messages and the rejected pieces that start with a segment (a broken
message); text that is not HL7 at all is rejected but not counted.
"""

from __future__ import annotations

from gateway.hl7.batch_body import (
    BLANK,
    BOM,
    SEGMENT_START,
    content_end,
    last_line_is_segment,
    leading_blank,
    normalise,
    tail_start,
)
from gateway.hl7.batch_items import (
    BatchEnd,
    BatchHeader,
    BatchStart,
    FileEnd,
    FileStart,
    Item,
    ReadMessage,
    RejectedPiece,
    parse_header,
)

#: How much of an oversized piece is kept for operators (as mllp.framing keeps of a frame).
OVERSIZED_HEAD_BYTES = 64 * 1024
_NONE, _TEXT, _MESSAGE = 0, 1, 2
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF16 = "UTF-16 text (a batch file must be in an ASCII-compatible character set)"


def _count_of(line: bytes) -> int | None:
    """BTS-1/FTS-1 of a trailer line, None when absent or not a number."""
    sep = line[3:4]
    if not sep or sep.isalnum():
        return None
    value = line[4:].split(sep, 1)[0].strip()
    return int(value) if value.isdigit() else None


class BatchState:
    """Batch and file bookkeeping; items to yield gather in ``out``."""

    def __init__(self, *, max_message_bytes: int, resume: tuple[int, int] | None = None) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.out: list[Item] = []
        self.max_message_bytes = max_message_bytes
        self.in_frame = False
        # The open piece.
        self.kind = _NONE
        self.offset = 0
        self.separator = 0x7C
        self.blank_lines = False  # the scanner saw a blank line in the open piece
        self.skipping = False  # an oversized piece: its bytes are dropped as they go by
        self.head = b""
        # The open file and batch.
        self.file_open = False
        self.file_header: BatchHeader | None = None
        self.file_batches = 0
        self.files_ended = 0
        self._outside = False  # a piece was rejected outside any file since the last FileEnd
        self.batch_open = False
        self.batch_header: BatchHeader | None = None
        self.batch = 0
        self.enveloped = False  # the open batch has a BHS
        self.index = 0
        self.last_numbered = 0  # the number of the last BHS batch
        if resume is not None:
            batch, index = resume
            self.file_open = True
            self.file_batches = max(batch, 1)
            self.batch_open = batch > 0 or index > 0
            self.batch = self.last_numbered = batch
            self.enveloped = batch > 0
            self.index = index

    # Pieces, as the scanner finds them.

    def open_text(self, offset: int) -> None:
        self.kind, self.offset, self.blank_lines = _TEXT, offset, False

    def open_message(self, offset: int, buf: bytes, q: int) -> None:
        self.kind, self.offset, self.separator, self.blank_lines = _MESSAGE, offset, buf[q + 3], False

    def oversized(self, buf: bytes, a: int, upto: int) -> bool:
        """The open piece, read up to ``upto``, is over the limit: drop it from now on (True)."""
        if self.skipping:
            return True
        if self.kind == _NONE or upto - a <= self.max_message_bytes:
            return False
        self.skipping, self.head = True, buf[a : a + OVERSIZED_HEAD_BYTES]
        return True

    def close_piece(self, buf: bytes, a: int, stop: int, end: int, *, cut: str = "") -> None:
        """The open piece is ``buf[a:stop]`` and ends at stream offset ``end`` with its framing."""
        kind, offset = self.kind, self.offset
        if kind == _NONE:
            return
        self.kind = _NONE
        if not self.skipping and stop - a > self.max_message_bytes:
            self.skipping, self.head = True, buf[a : a + OVERSIZED_HEAD_BYTES]
        if self.skipping:
            self.skipping, head, self.head = False, self.head, b""
            counted = kind == _MESSAGE or self._segment_like(head)
            what = "message" if kind == _MESSAGE else "text outside a message"
            if head.startswith(_UTF16_BOMS):
                what = _UTF16
            self._reject(offset, end, f"{what} larger than {self.max_message_bytes} bytes", head, counted)
            return
        body = buf[a:stop]
        if kind == _TEXT:
            self._text(body, offset, end)
        elif cut and self.in_frame:
            self._reject(offset, end, cut, body, True)
        else:
            self._message(body, offset, end if end > offset + len(body) else 0)

    def _message(self, body: bytes, offset: int, frame_end: int) -> None:
        if not last_line_is_segment(body, self.separator):
            split = tail_start(body, self.separator)
            junk = body[split:]
            lead = leading_blank(junk)
            if lead == len(junk) or not junk.replace(BOM, b"").strip(BLANK):  # blank lines and BOMs
                self._emit(body[:split], offset, frame_end or offset + split, True)
                return
            self._emit(body[:split], offset, offset + split, True)
            end = frame_end or offset + len(body)
            self._reject(offset + split + lead, end, "text that is not HL7 segments, after a message", junk[lead:])
            return
        end = frame_end or offset + (content_end(body) if self.blank_lines else len(body))
        self._emit(body, offset, end, self.blank_lines)

    def _emit(self, body: bytes, offset: int, end: int, blank_lines: bool) -> None:
        batch, index = self._count()
        self.out.append(ReadMessage(normalise(body, blank_lines), offset, end, batch, index))

    def _text(self, body: bytes, offset: int, end: int) -> None:
        stripped = body.replace(BOM, b"").strip(BLANK)
        if not stripped:
            return
        lead = leading_blank(body)
        if self._segment_like(stripped):
            self._reject(offset + lead, end, "segments before any MSH", body[lead:], True)
        else:
            reason = _UTF16 if body.startswith(_UTF16_BOMS) else "text that is not HL7 segments, outside a message"
            self._reject(offset + lead, end, reason, body[lead:])

    @staticmethod
    def _segment_like(text: bytes) -> bool:
        return SEGMENT_START.match(text.replace(BOM, b"").lstrip(BLANK)) is not None

    def _reject(self, offset: int, end: int, reason: str, raw: bytes, counted: bool = False) -> None:
        batch, index = self._count() if counted else (self.batch if self.batch_open else 0, 0)
        self._outside = self._outside or not self.file_open
        self.out.append(RejectedPiece(offset, end, reason, raw, batch, index))

    def _count(self) -> tuple[int, int]:
        if not self.batch_open:
            self._open_batch(None, 0)
        self.index += 1
        return self.batch, self.index

    # Envelope segments.

    def on_envelope(self, kind: bytes, line: bytes, offset: int, after: int) -> None:
        if kind == b"BHS":
            self._close_batch()
            self.last_numbered += 1
            self._open_batch(parse_header(line, offset), self.last_numbered)
        elif kind == b"BTS":
            if self.batch_open:
                self.batch_open = False
                self.out.append(BatchEnd(self.batch, self.batch_header, _count_of(line), self.index))
            else:
                self._reject(offset, after, "BTS outside a batch", line)
        elif kind == b"FHS":
            self._close_batch()
            self._close_file(None, trailer=False)
            header = parse_header(line, offset)
            self.file_open, self.file_header, self.file_batches = True, header, 0
            self.out.append(FileStart(header))
        else:  # FTS
            self._close_batch()
            if self.file_open:
                self._close_file(_count_of(line), trailer=True)
            else:
                self._reject(offset, after, "FTS outside a file", line)

    def _open_file(self) -> None:
        if not self.file_open:
            self.file_open, self.file_header, self.file_batches = True, None, 0

    def _open_batch(self, header: BatchHeader | None, number: int) -> None:
        self._open_file()
        self.batch_open, self.batch, self.batch_header, self.index = True, number, header, 0
        self.enveloped = header is not None
        self.file_batches += 1
        self.out.append(BatchStart(header, number))

    def _close_batch(self) -> None:
        """The open batch ends without a BTS."""
        if self.batch_open:
            self.batch_open = False
            self.out.append(BatchEnd(self.batch, self.batch_header, None, self.index, self.enveloped))

    def _close_file(self, declared: int | None, *, trailer: bool) -> None:
        if self.file_open:
            self.file_open, self._outside = False, False
            self.files_ended += 1
            missing = not trailer and self.file_header is not None
            self.out.append(FileEnd(self.file_header, declared, self.file_batches, missing))

    def finish(self) -> None:
        """The stream ended: close what is open; the last item is always a FileEnd."""
        self._close_batch()
        if self.file_open:
            self._close_file(None, trailer=False)
        elif self._outside or not self.files_ended:
            # Pieces after the last file's end (or no file at all): an empty file without envelope.
            self.out.append(FileEnd(None, None, 0))
