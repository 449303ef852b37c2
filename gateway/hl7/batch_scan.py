"""The batch reader's scanner: finds the pieces of a byte stream read in chunks.

It keeps one buffer holding the piece being read (a message, or text outside any message) and
the chunk after it, and looks for boundaries with one regular expression over the buffer, so a
message costs a few C-level searches rather than a loop over its bytes or lines. Boundaries:

- a line starting with MSH, BHS, FHS (followed by a delimiter, their field separator) or BTS, FTS
  (followed by anything but a letter or digit), optionally after a UTF-8 BOM;
- the MLLP block characters 0x0B (a frame starts) and 0x1C (it ends; a CR after it belongs to it).

Everything after an MSH line up to the next boundary is that message's body; text elsewhere is a
rejected piece unless blank. The grammar of batches and files is in gateway.hl7.batch_state.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from gateway.hl7.batch_items import Item
from gateway.hl7.batch_state import BatchState

BOM = b"\xef\xbb\xbf"
_NAMES = rb"(?:\xef\xbb\xbf)?(?:MSH|BHS|BTS|FHS|FTS)"
_BLANK_NEXT = rb"[\r\n \t\x1a]"
# A line end followed by a boundary segment name or by a blank line. The pattern is chosen for
# what the buffer holds: one that starts with a literal is searched at memchr-like speed; the
# general one (CR and LF both, CR alone among them) is 5 to 10 times slower.
_PATTERNS = {
    "CR": re.compile(rb"\r(?=" + _BLANK_NEXT + b"|" + _NAMES + b")"),
    "LF": re.compile(rb"\n(?=" + _BLANK_NEXT + b"|" + _NAMES + b")"),
    "CRLF": re.compile(rb"\n(?=" + _BLANK_NEXT + b"|" + _NAMES + b")"),  # no CR without LF after it
    "MIXED": re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?=" + _BLANK_NEXT + b"|" + _NAMES + b")"),
}
_BARE_CR = re.compile(rb"\r(?!\n)")
_LINE_END = re.compile(rb"[\r\n\x0b\x1c]")
_HEADERS = frozenset({b"MSH", b"BHS", b"FHS"})
_TRAILERS = frozenset({b"BTS", b"FTS"})
#: Printable ASCII punctuation: what a field separator may be (as message.read_separators).
_DELIMITERS = frozenset(b for b in range(0x21, 0x7F) if not chr(b).isalnum())
_ALNUM = frozenset(b for b in range(0x80) if chr(b).isalnum())
#: Enough bytes after a line start to tell a boundary: CRLF, BOM, name, separator.
_LOOKAHEAD = 9
_START_BLOCK, _END_BLOCK, _CR = 0x0B, 0x1C, 0x0D
_BLANK_BYTES = frozenset(b"\r\n \t\x1a")
_CUT_BY_FRAME = "truncated message: a new MLLP frame starts before its end block"
_CUT_BY_EOF = "truncated message: the stream ends inside its MLLP frame"


def segment_kind(buf: bytes, q: int) -> bytes | None:
    """The name at ``buf[q:]`` if a batch/message boundary starts there, else None."""
    name = buf[q : q + 3]
    follower = buf[q + 3] if q + 3 < len(buf) else -1
    if name in _HEADERS:
        return name if follower in _DELIMITERS else None
    if name in _TRAILERS:
        return name if follower not in _ALNUM else None
    return None


class Scanner:
    """Reads ``stream`` from ``start`` and feeds the pieces it finds to a BatchState."""

    def __init__(self, stream: BinaryIO, state: BatchState, *, chunk_size: int, start: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.stream = stream
        self.state = state
        self.chunk_size = chunk_size
        self.buf = b""
        self.base = start  # stream offset of buf[0]
        self.eof = False
        self.pos = 0  # everything before pos is done with (the open piece starts at pos)
        self.scan = 0  # where the boundary search goes on
        self.line_start = True  # pos is at the start of a line: check it for a boundary
        self.pattern = _PATTERNS["CR"]
        self.framed = False  # the buffer holds MLLP block characters
        self.next_block = -1  # where the next one is, from ``scan`` on (-1: none)

    def items(self) -> Iterator[Item]:
        state = self.state
        while True:
            self._scan()
            if state.out:
                yield from state.out
                state.out.clear()
            if self.eof:
                break
            self._fill()
        state.finish()
        yield from state.out
        state.out.clear()

    def _fill(self) -> None:
        keep = self.pos
        pending = len(self.buf) - keep
        # Read at least as much as is pending, so that a long piece is not copied once per chunk.
        data = self.stream.read(max(self.chunk_size, pending))
        if not data:
            self.eof = True
        if keep:
            self.base += keep
            self.pos -= keep
            self.scan -= keep
            self.buf = self.buf[keep:] + data if data else self.buf[keep:]
        elif data:
            self.buf += data
        self._choose_pattern()

    def _choose_pattern(self) -> None:
        """The fastest pattern right for the line ends in the buffer from ``scan`` on."""
        buf, scan = self.buf, self.scan
        if buf.find(b"\n", scan) < 0:
            mode = "CR"
        elif buf.find(b"\r", scan) < 0:
            mode = "LF"
        else:
            # A CR last in the buffer may be followed by an LF in the next chunk.
            stop = len(buf) if self.eof else len(buf) - 1
            mode = "MIXED" if _BARE_CR.search(buf, scan, stop) else "CRLF"
        self.pattern = _PATTERNS[mode]
        self.framed = buf.find(b"\x0b", scan) >= 0 or buf.find(b"\x1c", scan) >= 0
        self.next_block = -1

    def _block_after(self, scan: int) -> int:
        """The position of the next 0x0B or 0x1C at or after ``scan``, len(buf) when none."""
        if self.next_block < scan:
            buf = self.buf
            size = len(buf)
            start, end = buf.find(b"\x0b", scan), buf.find(b"\x1c", scan)
            self.next_block = min(start if start >= 0 else size, end if end >= 0 else size)
        return self.next_block

    def _scan(self) -> None:
        buf, eof, state = self.buf, self.eof, self.state
        size = len(buf)
        while True:
            if self.line_start:
                p = self.pos
                if not eof and size - p < _LOOKAHEAD:
                    return
                q = p + 3 if buf.startswith(BOM, p) else p
                kind = segment_kind(buf, q)
                if kind is not None:
                    if not self._on_segment(p, q, kind):
                        return
                    continue
                self.line_start = False
                state.open_text(self.base + p)
                self.scan = max(self.scan, p)
            block = self._block_after(self.scan) if self.framed else size
            m = self.pattern.search(buf, self.scan, block)
            if m is None:
                if block < size:
                    if not self._on_block(block):
                        return
                    continue
                if eof:
                    self._close(size, size, cut=_CUT_BY_EOF)
                    return
                self.scan = max(self.scan, size - _LOOKAHEAD)
                self._limit_piece()
                return
            q = m.end()
            if not eof and q + 7 > size:
                self.scan = m.start()
                return
            if buf[q] in _BLANK_BYTES:
                state.blank_lines = True
                self.scan = q
                continue
            if buf.startswith(BOM, q):
                q += 3
            kind = segment_kind(buf, q)
            if kind is None:
                self.scan = q
                continue
            if not self._on_segment(m.end(), q, kind):
                self.scan = m.start()
                return

    def _on_block(self, at: int) -> bool:
        """An MLLP block character at ``at``; False when the byte after it is still to come."""
        buf, state = self.buf, self.state
        if buf[at] == _START_BLOCK:
            self._close(at, at, cut=_CUT_BY_FRAME)
            state.in_frame = True
            self._restart(at + 1)
            return True
        if at + 1 >= len(buf) and not self.eof:
            self.scan = at
            return False
        end = at + 2 if buf[at + 1 : at + 2] == b"\r" else at + 1
        self._close(at, end)
        state.in_frame = False
        self._restart(end)
        return True

    def _restart(self, p: int) -> None:
        self.pos = self.scan = p
        self.line_start = True

    def _on_segment(self, p: int, q: int, kind: bytes) -> bool:
        """A boundary segment at ``q`` (its line starts at ``p``): close the open piece at ``p`` and
        handle it. False when the buffer does not hold its whole line yet."""
        buf, state = self.buf, self.state
        if kind == b"MSH":
            self._close(p, p)
            state.open_message(self.base + q, buf, q)
            self.pos, self.scan, self.line_start = q, q + 4, False
            return True
        found = _LINE_END.search(buf, q)
        if (found.start() if found is not None else len(buf)) - q > state.max_message_bytes:
            # No envelope segment is that long: it is text, dropped as it streams by.
            self._close(p, p)
            state.open_text(self.base + p)
            self.scan, self.line_start = q + 3, False
            return True
        if found is None:
            if not self.eof:
                return False
            line_end = after = len(buf)
        else:
            line_end = found.start()
            char = buf[line_end]
            if char == _CR and line_end + 1 >= len(buf) and not self.eof:
                return False
            if char == _CR and buf[line_end + 1 : line_end + 2] == b"\n":
                after = line_end + 2
            elif char in (_START_BLOCK, _END_BLOCK):
                after = line_end
            else:
                after = line_end + 1
        self._close(p, p)
        state.on_envelope(kind, buf[q:line_end], self.base + q, self.base + after)
        self._restart(after)
        return True

    def _close(self, stop: int, end: int, *, cut: str = "") -> None:
        """End the open piece at ``stop``; ``end`` is where it ends with its framing. ``cut``: why
        a message still inside an MLLP frame ends here (it is truncated)."""
        self.state.close_piece(self.buf, self.pos, stop, self.base + end, cut=cut)
        self.pos = end

    def _limit_piece(self) -> None:
        """A piece longer than the limit is dropped as it streams by, keeping its head."""
        if self.state.oversized(self.buf, self.pos, len(self.buf) - _LOOKAHEAD):
            self.pos = max(self.pos, len(self.buf) - _LOOKAHEAD)
