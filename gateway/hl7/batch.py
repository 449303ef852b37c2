"""HL7 v2 batch files (chapter 2.10.3), read as a stream of messages in constant memory.

``read_batch`` yields, while it reads, the envelopes (FileStart/BatchStart with the FHS/BHS
fields), each message (ReadMessage), each piece it cannot hand on (RejectedPiece, with byte
offsets and a reason that names no content) and the counts (BatchEnd: BTS-1 against the messages
read; FileEnd: FTS-1 against the batches read). Shapes accepted: FHS/BHS envelopes or none, many
batches, CR/LF/CRLF, blank lines, a BOM, MLLP framing per message (batches inside frames too).
docs/batch.md "File shapes accepted" says what becomes of each shape and of broken ones.

Memory: the buffer holds the piece being read and one chunk; a piece over ``max_message_bytes``
is dropped as it goes by (its first 64 KiB kept in its RejectedPiece).

Resuming: pass ``start`` = the ``end`` of the last committed message, with the stream already
positioned there, and its ``batch`` and ``index`` as ``start_batch`` and ``start_index``. Offsets,
batch numbers and counts then go on from there. What came before is not known again: the batch
open at ``start`` ends with ``header`` None, the file is taken to have begun with batch 1 (its
FileEnd.batches is exact for the usual shape, one FHS whose batches all have a BHS), and a file
ending inside an MLLP frame opened before ``start`` is not seen as truncated.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gateway.hl7.batch_items import (
    BatchEnd,
    BatchHeader,
    BatchStart,
    FileEnd,
    FileStart,
    Item,
    ReadMessage,
    RejectedPiece,
)
from gateway.hl7.batch_scan import Scanner
from gateway.hl7.batch_state import OVERSIZED_HEAD_BYTES, BatchState

__all__ = [
    "BatchEnd",
    "BatchHeader",
    "BatchStart",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FileEnd",
    "FileStart",
    "Item",
    "OVERSIZED_HEAD_BYTES",
    "ReadMessage",
    "RejectedPiece",
    "looks_like_batch",
    "open_batch_file",
    "open_batch_stream",
    "read_batch",
]

#: As HL7GW_MLLP_MAX_MESSAGE_BYTES' default: no single message is larger.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_BATCH_START = re.compile(rb"(?:\xef\xbb\xbf)?[\s\x0b]*(?:\xef\xbb\xbf)?(?:FHS|BHS)[!-/:-@\[-`{-~]")


def read_batch(
    stream: BinaryIO,
    *,
    chunk_size: int = 1 << 16,
    start: int = 0,
    start_batch: int = 0,
    start_index: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Iterator[Item]:
    """The items of the batch file ``stream`` holds, in order, read ``chunk_size`` bytes at a time.

    ``start``: resume at a byte offset that was the ``end`` of a committed message (the stream is
    already positioned there; offsets continue from ``start``); ``start_batch``/``start_index``:
    that message's ``batch`` and ``index``, so that numbering and counts go on.
    """
    resume = (start_batch, start_index) if start > 0 else None
    state = BatchState(max_message_bytes=max_message_bytes, resume=resume)
    return Scanner(stream, state, chunk_size=chunk_size, start=start).items()


def open_batch_file(path: Path) -> BinaryIO:
    """``path`` opened for reading bytes; decompressed when its name ends in .gz (or it starts
    with the gzip magic number, which no HL7 text does)."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open_batch_stream(path.open("rb"))


def open_batch_stream(stream: BinaryIO) -> BinaryIO:
    """``stream`` (standard input, an upload), decompressed if it starts with the gzip magic number."""
    head = b""
    while len(head) < len(_GZIP_MAGIC):
        data = stream.read(len(_GZIP_MAGIC) - len(head))
        if not data:
            break
        head += data
    whole = _Prefixed(head, stream)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=whole, mode="rb")  # type: ignore[return-value]
    return whole  # type: ignore[return-value]


class _Prefixed(io.RawIOBase):
    """``stream`` with ``head``, already read from it, put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head = head
        self.stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.head:
            head, self.head = (
                (self.head, b"")
                if size < 0 or size >= len(self.head)
                else (
                    self.head[:size],
                    self.head[size:],
                )
            )
            return head
        return self.stream.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def looks_like_batch(payload: bytes) -> bool:
    """The payload (an MLLP frame, an HTTP body) starts, after a BOM and white space, with an FHS
    or BHS segment: it is a batch, not a single message."""
    return _BATCH_START.match(payload, 0, 64) is not None
