"""Message archive: every received message, raw, with where it is in the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.envelope import Envelope
from gateway.store.db import metadata

message_archive = Table(
    "message_archive",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("sender", String(512), nullable=False, default=""),
    Column("control_id", String(256), nullable=False, default=""),
    Column("seq", BigInteger, nullable=False, default=0),
    Column("message_type", String(64), nullable=False, default=""),
    Column("peer", String(256), nullable=False, default=""),
    Column("received_at", BigInteger, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    # received -> processed | failed
    Column("status", String(16), nullable=False, default="received"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated_at", BigInteger, nullable=False),
    Column("detail", Text, nullable=False, default=""),
)
Index("ix_message_archive_sender_control", message_archive.c.sender, message_archive.c.control_id)
Index("ix_message_archive_status", message_archive.c.status, message_archive.c.received_at)


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


def _now_ms() -> int:
    return int(time.time() * 1000)


class MessageArchive:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record_attempt(self, envelope: Envelope, message_type: str = "") -> None:
        """Archive the envelope on its first attempt; count later attempts (redeliveries)."""
        now = _now_ms()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(message_archive)
                .where(message_archive.c.id == envelope.id)
                .values(attempts=message_archive.c.attempts + 1, updated_at=now)
            ).rowcount
            if changed:
                return
            try:
                conn.execute(
                    message_archive.insert().values(
                        id=envelope.id,
                        sender=envelope.sender,
                        control_id=envelope.control_id,
                        seq=envelope.seq,
                        message_type=message_type,
                        peer=envelope.peer,
                        received_at=envelope.received_at,
                        raw=envelope.raw,
                        status="received",
                        attempts=1,
                        updated_at=now,
                        detail="",
                    )
                )
            except IntegrityError:  # a concurrent redelivery inserted it first
                pass

    def mark(self, envelope_id: str, status: str, detail: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(message_archive)
                .where(message_archive.c.id == envelope_id)
                .values(status=status, detail=detail[:4000], updated_at=_now_ms())
            )

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
        )
