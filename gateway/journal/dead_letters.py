"""Dead-letter store: messages a stage gave up on, with the stage and the reason, kept until handled.

A dead letter's id is derived from the message and the stage (or sink) it failed at, so writing
the same letter twice (a redelivered message failing the same way again, a letter moved from its
Redis parking place after a crash) leaves one letter. It is written in one transaction with what
it means elsewhere: the archive row says "failed" (pipeline letters), the remote sink's delivery
row says "dead" (sink letters), the subscription's outbox row says "dead" (a notification its
endpoint refused: stage ``subscription:<id>``, the notification Bundle as its raw bytes).
"""

from __future__ import annotations

import builtins
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.db.bulk import BulkInsert
from gateway.db.schema import dead_letter, sink_delivery, subscription_event
from gateway.envelope import Envelope
from gateway.journal.deliveries import DEAD
from gateway.journal.filters import Cursor, LetterFilter
from gateway.journal.messages import MessageArchive

#: Namespace of dead-letter ids (UUIDv5 of "<envelope id>/<stage>"). Never change it.
LETTER_NAMESPACE = uuid.UUID("5b0e3f0c-8f0e-4a55-9d2f-3c1f8a4e6d21")

_INSERT = BulkInsert(
    dead_letter,
    ("id", "envelope_id", "sender", "control_id", "stage", "reason", "error_type", "attempts", "created_at")
    + ("status", "raw", "replay_of"),
    conflict="ON CONFLICT (id) DO NOTHING",
)
#: The envelope meta key naming the letter a replayed envelope came from.
REPLAY_OF = "replay_of"


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
    #: The letter whose replay failed again as this one ("" for a first attempt).
    replay_of: str = ""
    #: The envelope a replay of this letter queued (status replayed).
    replayed_as: str = ""
    handled_by: str = ""
    handled_at: int = 0
    handled_note: str = ""

    def summary(self) -> dict[str, Any]:
        """The letter as data, without its raw message (PHI): for lists and scripts."""
        return {
            "id": self.id,
            "envelope_id": self.envelope_id,
            "sender": self.sender,
            "control_id": self.control_id,
            "stage": self.stage,
            "reason": self.reason,
            "error_type": self.error_type,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "status": self.status,
            "replay_of": self.replay_of or None,
            "replayed_as": self.replayed_as or None,
            "handled_by": self.handled_by or None,
            "handled_at": self.handled_at or None,
            "handled_note": self.handled_note or None,
            "raw_purged": not self.raw,
        }


@dataclass(frozen=True)
class Letter:
    """A dead letter to write: the message, where and why it failed."""

    envelope: Envelope
    stage: str
    reason: str
    error_type: str = ""
    attempts: int = 1
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))
    #: A remote sink's name: the letter is that sink's, and its delivery row becomes "dead".
    sink: str | None = None
    #: Whether the sink was called for this message (counts as an attempt on the delivery row).
    sink_attempted: bool = False
    #: (subscription id, event number): a notification's letter; its outbox row becomes "dead".
    subscription_event: tuple[str, int] | None = None

    @property
    def id(self) -> str:
        return str(uuid.uuid5(LETTER_NAMESPACE, f"{self.envelope.id}/{self.stage}"))

    def to_json(self) -> dict[str, Any]:
        return {
            "envelope": self.envelope.to_json(),
            "stage": self.stage,
            "reason": self.reason,
            "error_type": self.error_type,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "sink": self.sink,
            "sink_attempted": self.sink_attempted,
            "subscription_event": list(self.subscription_event) if self.subscription_event else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Letter:
        event = data.get("subscription_event")
        return cls(
            **{
                **data,
                "envelope": Envelope.from_json(data["envelope"]),
                "subscription_event": (str(event[0]), int(event[1])) if event else None,
            }
        )


class DeadLetterStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.archive = MessageArchive(engine)

    def park(self, letter: Letter) -> bool:
        """Write ``letter`` with what it implies; False when it was there already (nothing changed)."""
        with self.engine.begin() as conn:
            return self.write(conn, letter)

    def write(self, conn: Connection, letter: Letter) -> bool:
        """``park`` in ``conn``'s open transaction."""
        exists = conn.execute(select(dead_letter.c.id).where(dead_letter.c.id == letter.id)).first()
        if exists is not None:
            return False
        e = letter.envelope
        _INSERT.run(
            conn,
            [
                # Truncated to the columns' sizes: a letter is never refused for a long field.
                (letter.id, e.id, e.sender[:512], e.control_id[:256], letter.stage[:128], letter.reason[:8000])
                + (letter.error_type[:128],)
                + (letter.attempts, letter.created_at, "open", e.raw, e.meta.get(REPLAY_OF, "")[:36])
            ],
        )
        if letter.subscription_event is not None:
            subscription_id, event_number = letter.subscription_event
            table = subscription_event
            conn.execute(
                update(table)
                .where(table.c.subscription_id == subscription_id, table.c.event_number == event_number)
                .values(status=DEAD, last_error=letter.reason[:4000], attempts=table.c.attempts + 1)
            )
        elif letter.sink is None:
            detail = f"{letter.stage}: {letter.reason}"
            self.archive.record(conn, [(e, "failed", detail, e.meta.get("message_type", ""), "")])
        else:
            table = sink_delivery
            conn.execute(
                update(table)
                .where(table.c.message_id == e.id, table.c.sink == letter.sink)
                .values(
                    status=DEAD,
                    last_error=letter.reason[:4000],
                    attempts=table.c.attempts + (1 if letter.sink_attempted else 0),
                    updated_at=int(time.time() * 1000),
                )
            )
        return True

    def for_envelope(self, envelope_id: str) -> list[DeadLetter]:
        """The letters of one message (one per stage or sink it failed at), oldest first."""
        table = dead_letter
        query = select(table).where(table.c.envelope_id == envelope_id).order_by(table.c.created_at, table.c.id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def list(
        self,
        *,
        status: str | None = "open",
        limit: int = 100,
        where: LetterFilter | None = None,
        after: Cursor | None = None,
    ) -> list[DeadLetter]:
        """Newest first; ``where`` (its status wins over ``status``) and a page's ``after`` cursor."""
        table = dead_letter
        where = where or LetterFilter(status=status)
        query = select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        if where.status:
            query = query.where(table.c.status == where.status)
        if where.stage:
            query = query.where(
                or_(table.c.stage == where.stage, table.c.stage.startswith(f"{where.stage}:", autoescape=True))
            )
        if where.sender:
            query = query.where(table.c.sender == where.sender)
        if where.since is not None:
            query = query.where(table.c.created_at >= where.since)
        if after is not None:
            query = query.where(
                or_(table.c.created_at < after.at, and_(table.c.created_at == after.at, table.c.id < after.id))
            )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def count_open(self) -> int:
        """How many letters wait for an operator (an index range count: cheap per scrape or status)."""
        with self.engine.connect() as conn:
            query = select(func.count()).select_from(dead_letter).where(dead_letter.c.status == "open")
            return int(conn.execute(query).scalar_one())

    def get(self, letter_id: str) -> DeadLetter | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(dead_letter).where(dead_letter.c.id == letter_id)).first()
        return _row(row) if row is not None else None

    def mark_replayed(self, letter_id: str, envelope_id: str, who: str, note: str = "") -> bool:
        """An open letter becomes ``replayed``, linked to the envelope its replay queued; False when
        it was not open (replayed or discarded meanwhile: the caller's replay is a harmless repeat)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(dead_letter)
                .where(dead_letter.c.id == letter_id, dead_letter.c.status == "open")
                .values(
                    status="replayed",
                    replayed_as=envelope_id,
                    handled_by=who[:128],
                    handled_at=int(time.time() * 1000),
                    handled_note=note,
                )
            )
        return bool(done.rowcount)

    def discard(self, letter_id: str, who: str, reason: str) -> bool:
        """An open letter becomes ``discarded`` with who and why; nothing is deleted. False when it
        was not open."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(dead_letter)
                .where(dead_letter.c.id == letter_id, dead_letter.c.status == "open")
                .values(
                    status="discarded", handled_by=who[:128], handled_at=int(time.time() * 1000), handled_note=reason
                )
            )
        return bool(done.rowcount)

    def purge(self, created_before: int) -> int:
        """Remove the raw message (PHI) of every letter created before ``created_before`` (ms) that
        is no longer open, for a retention policy; the rest of the row stays. Returns how many."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(dead_letter)
                .where(
                    dead_letter.c.created_at < created_before,
                    dead_letter.c.status != "open",
                    dead_letter.c.raw != b"",
                )
                .values(raw=b"")
            )
        return int(done.rowcount)

    def mark_replayed_many(self, replays: builtins.list[tuple[str, str]], who: str) -> int:
        """``mark_replayed`` for (letter id, envelope id) pairs in one transaction; how many were open."""
        now, marked = int(time.time() * 1000), 0
        with self.engine.begin() as conn:
            for letter_id, envelope_id in replays:
                done = conn.execute(
                    update(dead_letter)
                    .where(dead_letter.c.id == letter_id, dead_letter.c.status == "open")
                    .values(status="replayed", replayed_as=envelope_id, handled_by=who[:128], handled_at=now)
                )
                marked += done.rowcount
        return marked

    def open_letters(self, ids: builtins.list[str]) -> builtins.list[DeadLetter]:
        """The letters of ``ids`` that are open, in the order given."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(dead_letter).where(dead_letter.c.id.in_(ids), dead_letter.c.status == "open"))
            found = {row.id: _row(row) for row in rows}
        return [found[i] for i in ids if i in found]

    def chain(self, letter_id: str) -> tuple[DeadLetter, ...]:
        """The letter and the letters of its earlier attempts, newest first (replay_of links)."""
        found: builtins.list[DeadLetter] = []
        current = self.get(letter_id)
        while current is not None and len(found) < 100:
            found.append(current)
            current = self.get(current.replay_of) if current.replay_of else None
        return tuple(found)


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
        replay_of=row.replay_of,
        replayed_as=row.replayed_as,
        handled_by=row.handled_by,
        handled_at=row.handled_at,
        handled_note=row.handled_note,
    )


def edited_copy(archive: MessageArchive, letter: DeadLetter) -> bytes | None:
    """The corrected message an operator replayed the letter with (its archived bytes), or None when
    the letter was replayed as it was (or not yet): shown beside the original, which stays as it came."""
    if not letter.replayed_as:
        return None
    replayed = archive.get(letter.replayed_as)
    return replayed.raw if replayed is not None and replayed.raw != letter.raw else None
