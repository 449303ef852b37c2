"""Whether bytes are HL7 v2 at all, judged from their start: for the ways in that take a whole file
(the watched inbox, POST /hl7/batch), which refuse a file that is not HL7 as such instead of
keeping all of it as unreadable pieces."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

#: A BOM, blank lines or an MLLP start block, then an MSH, BHS or FHS segment with its delimiter.
_HL7_START = re.compile(rb"(?:\xef\xbb\xbf)?[\s\x0b]*(?:MSH|FHS|BHS)[!-/:-@\[-`{-~]")
#: How much of a stream ``starts_like_hl7`` looks at.
SNIFF_BYTES = 4096


def starts_like_hl7(head: bytes) -> bool:
    """``head`` (the first bytes of a decompressed stream) starts with an MSH, BHS or FHS segment."""
    return _HL7_START.match(head, 0, SNIFF_BYTES) is not None


def file_starts_like_hl7(path: Path) -> bool:
    """The same for a file, gzip or not (judged by its magic number): False when a gzip file
    cannot even be decompressed as far as its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as unzipped:
                head = unzipped.read(SNIFF_BYTES)
        except (OSError, EOFError, zlib.error):
            return False
    return starts_like_hl7(head)
