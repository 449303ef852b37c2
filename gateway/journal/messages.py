"""Message archive: every received message, raw, with where it is in the pipeline.

A worker writes a message's row in the same database transaction as the resources it produced
(``record``), so "processed" and the data are committed together; failures and acknowledgements
are recorded on their own (``record_outcome``). Rows are keyed by the envelope id: a redelivery
updates the row and counts the attempt.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, tuple_
from sqlalchemy.engine import Connection, Engine

from gateway.db.bulk import BulkInsert
from gateway.db.schema import message_archive
from gateway.envelope import Envelope

_RECORD = BulkInsert(
    message_archive,
    ("id", "sender", "control_id", "seq", "message_type", "peer", "received_at", "raw")
    + ("status", "attempts", "updated_at", "detail", "notes"),
    conflict="ON CONFLICT (id) DO UPDATE SET status = excluded.status, detail = excluded.detail,"
    " notes = excluded.notes,"
    " message_type = excluded.message_type, updated_at = excluded.updated_at,"
    " attempts = message_archive.attempts + 1",
)
_FIRST_SEQ = (
    select(message_archive.c.sender, message_archive.c.control_id, func.min(message_archive.c.seq))
    .where(
        tuple_(message_archive.c.sender, message_archive.c.control_id).in_(bindparam("pairs", expanding=True)),
        message_archive.c.seq > 0,
    )
    .group_by(message_archive.c.sender, message_archive.c.control_id)
)


#: (envelope, status, detail, message type, the conversion's notes one per line).
Outcome = tuple[Envelope, str, str, str, str]


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    id: str
    sender: str
    control_id: str
    seq: int
    message_type: str
    received_at: int
    status: str
    attempts: int
    detail: str
    raw: bytes
    #: What the conversion could not carry over, one note per line ("" when nothing).
    notes: str = ""
    #: When the row last changed (ms): the last attempt's end.
    updated_at: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class MessageArchive:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, conn: Connection, outcomes: Iterable[Outcome]) -> None:
        """Archive (envelope, status, detail, message type, notes) rows in ``conn``'s open transaction.

        A row already there (a redelivery, a replay) gets the new status and one more attempt.
        """
        now = _now_ms()
        rows = [
            (e.id, e.sender[:512], e.control_id[:256], e.seq, message_type[:64], e.peer[:256], e.received_at, e.raw)
            + (status, 1, now, detail[:4000], notes[:4000])
            for e, status, detail, message_type, notes in outcomes
        ]
        if len({row[0] for row in rows}) == len(rows):
            _RECORD.run(conn, rows)
        else:  # one statement must not update a row twice (PostgreSQL refuses): one row at a time
            for row in rows:
                _RECORD.run(conn, [row])

    def record_outcome(self, envelope: Envelope, status: str, detail: str = "", message_type: str = "") -> None:
        """``record`` one envelope in a transaction of its own."""
        with self.engine.begin() as conn:
            self.record(conn, [(envelope, status, detail, message_type, "")])

    @staticmethod
    def first_sequences(conn: Connection, envelopes: list[Envelope]) -> dict[str, int]:
        """Per envelope id: the sequence number its message got on its first arrival.

        A message resent after the intake's duplicate window arrives with a new sequence number;
        ordering uses the first one (same sender and MSH-10, chapter 2.14.9.10: the control id
        identifies the message), so a resend never looks newer than what came in between.
        """
        first = {e.id: e.seq for e in envelopes}
        pairs = sorted({(e.sender, e.control_id) for e in envelopes if e.control_id})
        earliest = {}
        for start in range(0, len(pairs), 200):
            chunk = pairs[start : start + 200]
            earliest.update({(row[0], row[1]): int(row[2]) for row in conn.execute(_FIRST_SEQ, {"pairs": chunk})})
        for envelope in envelopes:
            known = earliest.get((envelope.sender, envelope.control_id))
            if known is not None and (envelope.seq <= 0 or known < envelope.seq):
                first[envelope.id] = known
        return first

    def originals(self, envelope_ids: list[str]) -> dict[str, tuple[int, int, str]]:
        """Envelope id -> (received_at, seq, message type) of the archived messages among ``envelope_ids``."""
        t = message_archive.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.id, t.received_at, t.seq, t.message_type).where(t.id.in_(envelope_ids)))
            return {row.id: (row.received_at, row.seq, row.message_type) for row in rows}

    def get(self, envelope_id: str) -> ArchivedMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(message_archive).where(message_archive.c.id == envelope_id)).first()
        if row is None:
            return None
        return ArchivedMessage(
            id=row.id,
            sender=row.sender,
            control_id=row.control_id,
            seq=row.seq,
            message_type=row.message_type,
            received_at=row.received_at,
            status=row.status,
            attempts=row.attempts,
            detail=row.detail,
            raw=bytes(row.raw),
            notes=row.notes,
            updated_at=row.updated_at,
        )
