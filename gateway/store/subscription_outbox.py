"""The outbox of subscription notifications, and the dispatcher's lease and feed position.

The dispatcher numbers each matching change per subscription (``events`` + 1, gapless, from 1) and
writes the numbered events AND its new feed position in ONE transaction (``record``): a crash
before the commit leaves both as they were (the page is read and numbered again, the same way); a
crash after it leaves both done. So no event number is skipped or given twice.

One dispatcher at a time, among every worker process of every machine, by a lease row in the
database (``DispatchLease``), not a Redis lock: the position update of ``record`` is fenced by the
lease (``WHERE lease_owner = me AND lease_until > now``) in the same transaction, so a dispatcher
that lost its lease (paused, partitioned) cannot commit afterwards. A Redis lock could expire
without the database knowing, and two dispatchers could both commit a page.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from gateway import fhirjson
from gateway.db.schema import fhir_resource_history, subscription, subscription_dispatch, subscription_event

DISPATCHER = "dispatcher"
PENDING, SENT, DEAD = "pending", "sent", "dead"


class LeaseLost(Exception):
    """Another process holds the dispatcher's lease now: this one's transaction was not committed."""


@dataclass(frozen=True, slots=True)
class Event:
    """One numbered notification event of one subscription."""

    subscription_id: str
    event_number: int
    resource_type: str
    resource_id: str
    version_id: int
    deleted: bool
    occurred_at: datetime
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Matched:
    """A change that matched a subscription's criteria, before it has its number."""

    subscription_id: str
    resource_type: str
    resource_id: str
    version_id: int
    deleted: bool
    occurred_at: datetime


class DispatchLease:
    """The dispatcher's lease: ``hold`` takes it when free or expired, or renews it."""

    def __init__(self, engine: Engine, owner: str, lease_s: float = 15.0):
        self.engine = engine
        self.owner = owner[:64]
        self.lease_ms = int(lease_s * 1000)
        #: Until when (time.monotonic) this process may act as the holder: the lease's length from
        #: before the renewal began, less a margin, so it stops before anyone else may start.
        self.valid_until = 0.0

    def hold(self) -> bool:
        """Take or renew the lease; True when this process holds it until now + lease."""
        started = time.monotonic()
        now = _ms()
        table = subscription_dispatch
        with self.engine.begin() as conn:
            if conn.execute(select(table.c.name).where(table.c.name == DISPATCHER)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            table.insert().values(
                                name=DISPATCHER, position=None, lease_owner="", lease_until=0, updated_at=now
                            )
                        )
                except IntegrityError:
                    pass  # another process made it first
            taken = conn.execute(
                update(table)
                .where(table.c.name == DISPATCHER)
                .where((table.c.lease_owner == self.owner) | (table.c.lease_until < now))
                .values(lease_owner=self.owner, lease_until=now + self.lease_ms, updated_at=now)
            ).rowcount
        self.valid_until = started + self.lease_ms / 1000 * 0.8 if taken else 0.0
        return bool(taken)

    def valid(self) -> bool:
        """Whether this process still holds the lease by its own clock (see ``valid_until``)."""
        return time.monotonic() < self.valid_until

    def release(self) -> None:
        self.valid_until = 0.0
        with self.engine.begin() as conn:
            conn.execute(
                update(subscription_dispatch)
                .where(subscription_dispatch.c.name == DISPATCHER, subscription_dispatch.c.lease_owner == self.owner)
                .values(lease_until=0, updated_at=_ms())
            )

    def position(self, conn: Connection) -> str | None:
        row = conn.execute(
            select(subscription_dispatch.c.position).where(subscription_dispatch.c.name == DISPATCHER)
        ).first()
        return row.position if row is not None else None


def record(conn: Connection, owner: str, matched: Iterable[Matched], position: str | None) -> dict[str, list[int]]:
    """Number ``matched`` per subscription and queue them, and move the feed position to
    ``position``, in ``conn``'s transaction (the caller commits). Raises LeaseLost when ``owner``
    does not hold the lease: the caller must roll back. Returns subscription -> event numbers."""
    now = _ms()
    fenced = conn.execute(
        update(subscription_dispatch)
        .where(
            subscription_dispatch.c.name == DISPATCHER,
            subscription_dispatch.c.lease_owner == owner[:64],
            subscription_dispatch.c.lease_until > now,
        )
        .values(position=position, updated_at=now)
    ).rowcount
    if not fenced:
        raise LeaseLost("the dispatcher's lease is held by another process")
    by_subscription: dict[str, list[Matched]] = {}
    for item in matched:
        by_subscription.setdefault(item.subscription_id, []).append(item)
    numbered: dict[str, list[int]] = {}
    for subscription_id, items in sorted(by_subscription.items()):
        row = conn.execute(select(subscription.c.events).where(subscription.c.id == subscription_id)).first()
        if row is None:  # deleted meanwhile: nothing to number
            continue
        first = int(row.events) + 1
        numbers = list(range(first, first + len(items)))
        conn.execute(
            update(subscription)
            .where(subscription.c.id == subscription_id)
            .values(events=subscription.c.events + len(items))
        )
        conn.execute(
            subscription_event.insert(),
            [
                {
                    "subscription_id": subscription_id,
                    "event_number": number,
                    "resource_type": item.resource_type,
                    "resource_id": item.resource_id,
                    "version_id": item.version_id,
                    "deleted": item.deleted,
                    "occurred_at": item.occurred_at,
                    "status": PENDING,
                    "attempts": 0,
                    "next_attempt_at": 0,
                    "last_error": "",
                    "created_at": now,
                    "sent_at": 0,
                }
                for number, item in zip(numbers, items)
            ],
        )
        numbered[subscription_id] = numbers
    return numbered


class Outbox:
    """A subscription's queue of notifications, read head first (event-number order)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def head(self, subscription_id: str, limit: int) -> list[Event]:
        """The first ``limit`` pending events, lowest number first."""
        table = subscription_event
        stmt = (
            select(table)
            .where(table.c.subscription_id == subscription_id, table.c.status == PENDING)
            .order_by(table.c.event_number)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_event(row) for row in conn.execute(stmt)]

    def contents(self, events: list[Event]) -> dict[tuple[str, str, int], dict[str, Any]]:
        """The content of each event's version (deletions have none), in one query."""
        keys = sorted({(e.resource_type, e.resource_id, e.version_id) for e in events if not e.deleted})
        if not keys:
            return {}
        table = fhir_resource_history
        stmt = select(table.c.type, table.c.id, table.c.version_id, table.c.content).where(
            tuple_(table.c.type, table.c.id, table.c.version_id).in_(keys), table.c.content.is_not(None)
        )
        with self.engine.connect() as conn:
            return {(row.type, row.id, row.version_id): fhirjson.loads(row.content) for row in conn.execute(stmt)}

    def sent(self, subscription_id: str, numbers: list[int]) -> None:
        self._set(subscription_id, numbers, status=SENT, sent_at=_ms(), last_error="")

    def failed(self, subscription_id: str, numbers: list[int], error: str, next_attempt_at: int) -> None:
        """An attempt failed and may pass later: counted, with when to try again."""
        table = subscription_event
        self._set(
            subscription_id,
            numbers,
            attempts=table.c.attempts + 1,
            last_error=error[:4000],
            next_attempt_at=next_attempt_at,
        )

    def prune(self, sent_before: int) -> int:
        """Forget the events sent before ``sent_before`` (ms); pending and dead ones stay. The
        numbering lives on the subscription row, so nothing is numbered twice after this."""
        table = subscription_event
        with self.engine.begin() as conn:
            done = conn.execute(delete(table).where(table.c.status == SENT, table.c.sent_at < sent_before))
        return int(done.rowcount)

    def pending(self, subscription_id: str) -> int:
        table = subscription_event
        stmt = select(func.count()).where(table.c.subscription_id == subscription_id, table.c.status == PENDING)
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def events(self, subscription_id: str) -> list[Event]:
        """Every event of a subscription still kept, by number (tests, operators)."""
        table = subscription_event
        stmt = select(table).where(table.c.subscription_id == subscription_id).order_by(table.c.event_number)
        with self.engine.connect() as conn:
            return [_event(row) for row in conn.execute(stmt)]

    def _set(self, subscription_id: str, numbers: list[int], **values: Any) -> None:
        table = subscription_event
        with self.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(
                    table.c.subscription_id == subscription_id,
                    table.c.event_number.in_(numbers),
                    table.c.status == PENDING,
                )
                .values(**values)
            )


def _event(row: Any) -> Event:
    return Event(
        row.subscription_id,
        int(row.event_number),
        row.resource_type,
        row.resource_id,
        row.version_id,
        bool(row.deleted),
        row.occurred_at,
        row.status,
        row.attempts,
        int(row.next_attempt_at),
        row.last_error,
    )


def _ms() -> int:
    return int(time.time() * 1000)
