"""Per sender (MSH-3|MSH-4), from the message archive and the dead letters: messages since a time
and in the last hour, the last one's time, failures, open dead letters. The console's dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from gateway.db.schema import dead_letter, message_archive

_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class SenderActivity:
    sender: str
    #: Messages received since ``since`` (the start of the day, UTC, on the dashboard).
    since_count: int
    last_hour: int
    last_received_at: int
    #: Messages since ``since`` whose processing failed (each has a dead letter).
    failed: int
    open_letters: int


def sender_activity(engine: Engine, since_ms: int, now_ms: int, limit: int = 200) -> list[SenderActivity]:
    """Senders heard from since ``since_ms`` or with open dead letters, the most recently heard first."""
    t = message_archive.c
    hour = now_ms - _HOUR_MS
    received = (
        select(
            t.sender,
            func.count().label("since_count"),
            func.sum(case((t.received_at >= hour, 1), else_=0)).label("last_hour"),
            func.max(t.received_at).label("last_received_at"),
            func.sum(case((t.status == "failed", 1), else_=0)).label("failed"),
        )
        .where(t.received_at >= since_ms, t.status != "ack")
        .group_by(t.sender)
    )
    letters = (
        select(dead_letter.c.sender, func.count().label("open"))
        .where(dead_letter.c.status == "open")
        .group_by(dead_letter.c.sender)
    )
    with engine.connect() as conn:
        rows = {row.sender: row for row in conn.execute(received)}
        open_letters = {row.sender: int(row.open) for row in conn.execute(letters)}
        missing = [s for s in open_letters if s not in rows]
        last_seen: dict[str, int] = {}
        if missing:
            stmt = select(t.sender, func.max(t.received_at)).where(t.sender.in_(missing)).group_by(t.sender)
            last_seen = {sender: int(at or 0) for sender, at in conn.execute(stmt)}
    found = [
        SenderActivity(
            sender,
            int(row.since_count),
            int(row.last_hour or 0),
            int(row.last_received_at or 0),
            int(row.failed or 0),
            open_letters.get(sender, 0),
        )
        for sender, row in rows.items()
    ]
    found += [SenderActivity(s, 0, 0, last_seen.get(s, 0), 0, open_letters[s]) for s in missing]
    return sorted(found, key=lambda a: (-a.last_received_at, a.sender))[:limit]
