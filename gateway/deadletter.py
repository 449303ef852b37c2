"""Dead-letter store: messages a stage gave up on, with the stage and the reason, kept until handled."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text, select
from sqlalchemy.engine import Engine

from gateway.envelope import Envelope
from gateway.store.db import metadata

dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("envelope_id", String(64), nullable=False),
    Column("sender", String(512), nullable=False, default=""),
    Column("control_id", String(256), nullable=False, default=""),
    Column("stage", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("error_type", String(128), nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=1),
    Column("created_at", BigInteger, nullable=False),
    # open -> replayed | discarded
    Column("status", String(16), nullable=False, default="open"),
    Column("raw", LargeBinary, nullable=False),
)
Index("ix_dead_letter_status_created", dead_letter.c.status, dead_letter.c.created_at)
Index("ix_dead_letter_envelope", dead_letter.c.envelope_id)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    envelope_id: str
    sender: str
    control_id: str
    stage: str
    reason: str
    error_type: str
    attempts: int
    created_at: int
    status: str
    raw: bytes


class DeadLetterStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def park(self, envelope: Envelope, *, stage: str, reason: str, error_type: str = "", attempts: int = 1) -> str:
        """Record ``envelope`` as a dead letter; returns the dead letter's id."""
        letter_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(
                dead_letter.insert().values(
                    id=letter_id,
                    envelope_id=envelope.id,
                    sender=envelope.sender,
                    control_id=envelope.control_id,
                    stage=stage,
                    reason=reason[:8000],
                    error_type=error_type,
                    attempts=attempts,
                    created_at=int(time.time() * 1000),
                    status="open",
                    raw=envelope.raw,
                )
            )
        return letter_id

    def list(self, *, status: str | None = "open", limit: int = 100) -> list[DeadLetter]:
        query = select(dead_letter).order_by(dead_letter.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(dead_letter.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def get(self, letter_id: str) -> DeadLetter | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(dead_letter).where(dead_letter.c.id == letter_id)).first()
        return _row(row) if row is not None else None


def _row(row) -> DeadLetter:  # type: ignore[no-untyped-def]
    return DeadLetter(
        id=row.id,
        envelope_id=row.envelope_id,
        sender=row.sender,
        control_id=row.control_id,
        stage=row.stage,
        reason=row.reason,
        error_type=row.error_type,
        attempts=row.attempts,
        created_at=row.created_at,
        status=row.status,
        raw=bytes(row.raw),
    )
