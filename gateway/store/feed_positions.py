"""Feed positions: every history row gets a number, and the numbers follow commit order.

A number taken inside a transaction is not commit order by itself: T1 takes 10, T2 takes 11 and
commits first; a reader that saw 11 and moved past it would never see 10. So a writer takes its
positions by updating the one row of ``fhir_feed_counter`` and holds that row's lock until it
commits (PostgreSQL locks an updated row until the end of the transaction; a second writer's
UPDATE waits, then reads the committed value, explore-mvcc.html / EvalPlanQual; on SQLite the
writer's BEGIN IMMEDIATE already serializes every writer). Hence:

* the positions of a transaction are all above those of every transaction committed before it;
* when a reader sees a position, every lower position that will ever be visible is visible
  already (the lower one committed first, and a lock is released only after the commit is
  visible to new snapshots), so a reader that remembers the last position it saw misses nothing;
* a transaction that rolls back leaves no gap: its update of the counter is rolled back too.

The cost: writers serialize from their ``take`` to their commit (the commit's fsync included).
The store takes positions as the last statement of its write (gateway/store/writer.py) to keep
that window short (its cost on the write path: docs/consumers.md, "The history feed").
"""

from __future__ import annotations

from sqlalchemy import BigInteger, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.db.schema import fhir_feed_counter, fhir_resource_history

_ROW = 1
_counter = fhir_feed_counter
_TAKE = (
    update(_counter)
    .where(_counter.c.id == _ROW)
    .values(last_position=_counter.c.last_position + bindparam("taken", type_=BigInteger))
    .returning(_counter.c.last_position)
)


def take(conn: Connection, count: int) -> int:
    """Reserve ``count`` (> 0) consecutive positions in ``conn``'s open write transaction; the first.

    The counter row stays locked until the transaction ends: call this as late as possible.
    """
    last = conn.execute(_TAKE, {"taken": count}).scalar_one_or_none()
    if last is None:  # a database made without the migration's row (create_all): make it, once
        _seed(conn)
        last = conn.execute(_TAKE, {"taken": count}).scalar_one()
    return int(last) - count + 1


def _seed(conn: Connection) -> None:
    highest = select(func.coalesce(func.max(fhir_resource_history.c.feed_position), 0)).scalar_subquery()
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(_counter).values(id=_ROW, last_position=highest).on_conflict_do_nothing())
