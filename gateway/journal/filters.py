"""What operators filter the journal by, and how they page through it (CLI and /admin alike).

``since`` is an ISO 8601 date or date-time (UTC unless it carries an offset), or an age: ``30m``,
``2h``, ``7d``. A page ends with a cursor, an opaque text naming the last row (its time and id),
from which the next page starts: rows written meanwhile do not shift the pages.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

_AGE = re.compile(r"(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class FilterError(ValueError):
    """A filter or cursor an operator gave cannot be read; its text says which and why."""


def parse_since(text: str, now_ms: int | None = None) -> int:
    """``since`` as epoch milliseconds; FilterError when it is neither a date-time nor an age."""
    text = text.strip()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age = _AGE.fullmatch(text)
    if age:
        return now_ms - int(age.group(1)) * _UNIT_S[age.group(2)] * 1000
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"since {text[:40]!r} is not an ISO 8601 date-time (2026-12-07T08:00:00Z) or an age (30m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last row's time (ms) and id; the next page has older rows."""

    at: int
    id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.at}:{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            at, _, row_id = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition(":")
            return cls(int(at), row_id)
        except (ValueError, UnicodeDecodeError):
            raise FilterError(f"cursor {text[:40]!r} is not one this gateway gave out") from None


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Dead letters by status (None: any), stage (``deliver`` takes every ``deliver:<sink>``),
    sender (``application|facility``), and time written."""

    status: str | None = "open"
    stage: str | None = None
    sender: str | None = None
    since: int | None = None


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Archived messages by MSH-10, sender, status (received, processed, failed, ack), time received
    (``since`` and ``until``, ms) and message type (MSH-9 as archived, or its start: ``ADT^A01``
    finds ``ADT^A01^ADT_A01``)."""

    control_id: str | None = None
    sender: str | None = None
    status: str | None = None
    since: int | None = None
    until: int | None = None
    message_type: str | None = None


#: Dead-letter and archive statuses an operator may filter by.
LETTER_STATUSES = frozenset({"open", "replayed", "discarded"})
MESSAGE_STATUSES = frozenset({"received", "processed", "failed", "ack"})
