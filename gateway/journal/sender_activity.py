"""Per sender (MSH-3|MSH-4), from the message archive and the dead letters: messages since a time
and in the last hour, the last one's time, failures, rejections at intake, open dead letters. The
console's dashboard."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Engine

from gateway.db.schema import dead_letter, message_archive
from gateway.stages import Stage

_HOUR_MS = 3_600_000
#: Every status but "ack" (acknowledgements a sender sent back are no traffic), listed so the
#: database reads only the period asked for from the (status, received_at) index.
COUNTED = ("received", "processed", "failed")


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
    #: Messages since ``since`` the listener answered AR/AE (dead letters at stage intake).
    rejected: int = 0


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
        .where(t.status.in_(COUNTED), t.received_at >= since_ms)  # the (status, received_at) index: today only
        .group_by(t.sender)
    )
    d = dead_letter.c
    rejected_since = and_(d.stage == Stage.INTAKE, d.created_at >= since_ms)
    letters = (
        select(
            d.sender,
            func.sum(case((d.status == "open", 1), else_=0)).label("open"),
            func.sum(case((rejected_since, 1), else_=0)).label("rejected"),
        )
        .where(or_(d.status == "open", rejected_since))
        .group_by(d.sender)
    )
    with engine.connect() as conn:
        rows = {row.sender: row for row in conn.execute(received)}
        counted = {row.sender: (int(row.open or 0), int(row.rejected or 0)) for row in conn.execute(letters)}
        missing = [s for s in counted if s not in rows]
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
            *counted.get(sender, (0, 0)),
        )
        for sender, row in rows.items()
    ]
    found += [SenderActivity(s, 0, 0, last_seen.get(s, 0), 0, *counted[s]) for s in missing]
    return sorted(found, key=lambda a: (-a.last_received_at, a.sender))[:limit]
