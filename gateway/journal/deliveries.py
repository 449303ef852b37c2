"""Delivery state per message per remote sink: pending until delivered, or dead with its reason.

A message's rows are written with its resources, in the same transaction (``open``), so every
message the built-in store holds has a row for each remote sink configured at the time. The
sink's worker updates its row on every attempt. Operators read ``summary`` and ``pending``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.db.bulk import BulkInsert
from gateway.db.schema import sink_delivery

#: pending -> delivered | dead
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


@dataclass(frozen=True, slots=True)
class DeliveryState:
    message_id: str
    sink: str
    status: str
    attempts: int
    last_error: str
    received_at: int
    next_attempt_at: int
    updated_at: int


def _now_ms() -> int:
    return int(time.time() * 1000)


_OPEN = BulkInsert(
    sink_delivery,
    ("message_id", "sink", "status", "attempts", "last_error", "received_at", "next_attempt_at", "updated_at"),
    conflict="ON CONFLICT DO NOTHING",
)


def open_deliveries(conn: Connection, rows: Iterable[tuple[str, str, int]]) -> None:
    """Add pending rows (message id, sink, received at) in ``conn``'s transaction; existing rows stay."""
    now = _now_ms()
    _OPEN.run(conn, [(m, s, PENDING, 0, "", r, now, now) for m, s, r in rows])


class DeliveryStates:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, message_id: str, sink: str) -> DeliveryState | None:
        table = sink_delivery
        with self.engine.connect() as conn:
            row = conn.execute(select(table).where(table.c.message_id == message_id, table.c.sink == sink)).first()
        return _state(row) if row is not None else None

    def for_message(self, message_id: str) -> list[DeliveryState]:
        """The message's state at every sink, by sink name."""
        table = sink_delivery
        stmt = select(table).where(table.c.message_id == message_id).order_by(table.c.sink)
        with self.engine.connect() as conn:
            return [_state(row) for row in conn.execute(stmt)]

    def attempted(self, message_id: str, sink: str, error: str, next_attempt_at: int) -> None:
        """One more failed attempt; the next is due at ``next_attempt_at``."""
        self._update(
            message_id,
            sink,
            PENDING,
            last_error=error[:4000],
            next_attempt_at=next_attempt_at,
            attempts=sink_delivery.c.attempts + 1,
        )

    def delivered(self, message_id: str, sink: str) -> None:
        self._update(message_id, sink, DELIVERED, attempts=sink_delivery.c.attempts + 1, last_error="")

    def dead(self, message_id: str, sink: str, reason: str, attempted: bool) -> None:
        attempts = sink_delivery.c.attempts + (1 if attempted else 0)
        self._update(message_id, sink, DEAD, last_error=reason[:4000], attempts=attempts)

    def summary(self) -> dict[tuple[str, str], int]:
        """(sink, status) -> number of messages."""
        table = sink_delivery
        stmt = select(table.c.sink, table.c.status, func.count()).group_by(table.c.sink, table.c.status)
        with self.engine.connect() as conn:
            return {(row[0], row[1]): int(row[2]) for row in conn.execute(stmt)}

    def pending(self, sink: str, limit: int = 100) -> list[DeliveryState]:
        """The oldest messages still waiting for ``sink``."""
        table = sink_delivery
        stmt = (
            select(table)
            .where(table.c.sink == sink, table.c.status == PENDING)
            .order_by(table.c.received_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_state(row) for row in conn.execute(stmt)]

    def _update(self, message_id: str, sink: str, status: str, **values: object) -> None:
        table = sink_delivery
        with self.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.message_id == message_id, table.c.sink == sink)
                .values(status=status, updated_at=_now_ms(), **values)
            )


def _state(row: object) -> DeliveryState:
    r = row._mapping  # type: ignore[attr-defined]
    return DeliveryState(
        r["message_id"],
        r["sink"],
        r["status"],
        r["attempts"],
        r["last_error"],
        r["received_at"],
        r["next_attempt_at"],
        r["updated_at"],
    )
