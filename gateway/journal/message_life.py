"""One message's life, gathered from the journal: its archive row, the resource versions it wrote
or was superseded on, its delivery to each remote sink, and its dead letters. What ``hl7gw
message`` prints and ``GET /admin/messages/{id}`` answers; the raw message only when asked for."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine

from gateway.db.schema import message_archive
from gateway.journal import provenance
from gateway.journal.dead_letters import DeadLetter, DeadLetterStore
from gateway.journal.deliveries import DeliveryState, DeliveryStates
from gateway.journal.filters import Cursor, MessageFilter
from gateway.journal.messages import ArchivedMessage, MessageArchive
from gateway.journal.provenance import ProvenanceRecord


@dataclass(frozen=True, slots=True)
class MessageLife:
    message: ArchivedMessage
    resources: list[ProvenanceRecord]
    deliveries: list[DeliveryState]
    letters: list[DeadLetter]

    def to_json(self, raw: bool = False) -> dict[str, Any]:
        """The life as data; ``raw`` adds the message itself (PHI: operators only)."""
        m = self.message
        data: dict[str, Any] = {**summary(m), "detail": m.detail, "notes": [n for n in m.notes.split("\n") if n]}
        data["resources"] = [
            {
                "reference": f"{r.type}/{r.id}",
                "version_id": r.version_id,
                "outcome": r.outcome,
                "superseded_by": r.superseded_by,
                "recorded_at": r.recorded_at.isoformat(),
            }
            for r in self.resources
        ]
        data["deliveries"] = [
            {"sink": d.sink, "status": d.status, "attempts": d.attempts, "last_error": d.last_error}
            for d in self.deliveries
        ]
        data["dead_letters"] = [letter.summary() for letter in self.letters]
        if raw:
            data["raw"] = m.raw.decode("utf-8", errors="replace")
            data["raw_base64"] = base64.b64encode(m.raw).decode()
        return data


def summary(m: ArchivedMessage) -> dict[str, Any]:
    """An archived message as a row of a list, without its raw content."""
    return {
        "id": m.id,
        "sender": m.sender,
        "control_id": m.control_id,
        "message_type": m.message_type,
        "received_at": m.received_at,
        "seq": m.seq,
        "status": m.status,
        "attempts": m.attempts,
    }


def life_of(engine: Engine, message: ArchivedMessage) -> MessageLife:
    return MessageLife(
        message,
        provenance.for_message(engine, message.id),
        DeliveryStates(engine).for_message(message.id),
        DeadLetterStore(engine).for_envelope(message.id),
    )


def find_messages(engine: Engine, key: str, limit: int = 20) -> list[ArchivedMessage]:
    """Archived messages whose id or MSH-10 is ``key`` (a control id may repeat across senders)."""
    table = message_archive
    stmt = (
        select(table.c.id)
        .where(or_(table.c.id == key, table.c.control_id == key))
        .order_by(table.c.received_at.desc())
        .limit(limit)
    )
    return _load(engine, stmt)


def search_messages(
    engine: Engine, where: MessageFilter, limit: int = 50, after: Cursor | None = None
) -> list[ArchivedMessage]:
    """Archived messages matching ``where``, newest first, the page after ``after``."""
    table = message_archive
    stmt = select(table.c.id).order_by(table.c.received_at.desc(), table.c.id.desc()).limit(limit)
    if where.control_id:
        stmt = stmt.where(table.c.control_id == where.control_id)
    if where.sender:
        stmt = stmt.where(table.c.sender == where.sender)
    if where.status:
        stmt = stmt.where(table.c.status == where.status)
    if where.since is not None:
        stmt = stmt.where(table.c.received_at >= where.since)
    if where.until is not None:
        stmt = stmt.where(table.c.received_at < where.until)
    if where.message_type:
        stmt = stmt.where(table.c.message_type.startswith(where.message_type, autoescape=True))
    if after is not None:
        stmt = stmt.where(
            or_(table.c.received_at < after.at, and_(table.c.received_at == after.at, table.c.id < after.id))
        )
    return _load(engine, stmt)


def _load(engine: Engine, stmt: Any) -> list[ArchivedMessage]:
    with engine.connect() as conn:
        ids = [row.id for row in conn.execute(stmt)]
    archive = MessageArchive(engine)
    return [m for m in (archive.get(i) for i in ids) if m is not None]
