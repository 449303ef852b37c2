"""Which message's data is newer: the rule that keeps an older message from overwriting newer data.

Every write from a message carries its ``Source``. The store keeps, per resource, the source of the
message that last wrote it, and compares an incoming write's source with it:

* the source timestamp decides: EVN-2 (recorded date/time, chapter 3.4.1.2), else MSH-7 (date/time
  of message, chapter 2.14.9.7), else the time the gateway received the message; a value without
  a UTC offset is read in the sender's configured zone (HL7GW_SENDER_TZ, HL7GW_DEFAULT_TZ), else
  as UTC (consistently, so one sender's messages compare correctly);
* at the same timestamp, the per-sender sequence number (the order in which the gateway first
  accepted the sender's messages) decides between messages of one sender;
* at the same timestamp from different senders, the sender name breaks the tie: arbitrary, but
  the same whatever order the messages arrive in, so every order ends in the same state.

A write whose source is older than the stored one is skipped and recorded as superseded. Equal
sources are the same message (a redelivery or a replay): its write is applied if the content
differs (a replay after a mapping fix) and is "unchanged" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

#: (timestamp, sender, sequence): compared as a tuple.
OrderKey = tuple[datetime, str, int]


@dataclass(frozen=True, slots=True)
class Source:
    """The message a write comes from."""

    #: The message archive id (the envelope id).
    message_id: str
    #: "application|facility" (MSH-3, MSH-4).
    sender: str
    #: MSH-10.
    control_id: str
    #: Per-sender sequence number of the message's first arrival (0 when unknown).
    seq: int
    #: Source timestamp, naive UTC.
    time: datetime

    @property
    def key(self) -> OrderKey:
        return (self.time, self.sender, self.seq)

    def with_seq(self, seq: int) -> Source:
        return replace(self, seq=seq)


def stored_key(row: Any) -> OrderKey | None:
    """The order key kept in a resource row's ``source_*`` columns, or None when it has none."""
    if row.source_time is None:
        return None
    return (row.source_time, row.source_sender or "", int(row.source_seq or 0))


def is_older(source: Source | None, stored: OrderKey | None) -> bool:
    """True when ``source`` is strictly older than what wrote the stored resource.

    A write without a source (not from a message) and a resource without one are never ordered.
    """
    return source is not None and stored is not None and source.key < stored


def is_newer(source: Source | None, stored: OrderKey | None) -> bool:
    """True when ``source`` should replace the stored source (it is strictly newer, or there is none)."""
    return source is not None and (stored is None or source.key > stored)
