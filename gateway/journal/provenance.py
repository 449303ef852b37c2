"""Which received message produced or changed which resource versions, and which writes were superseded.

One row per (message, resource, version): ``created``, ``updated``, ``deleted`` (the version the
message made), ``moved`` (a version made by a Patient merge re-pointing references), or
``superseded`` (the message's data for the resource was older than the stored data: the row names
the version that stayed and, in ``superseded_by``, the message that wrote it). A write that
changed nothing (a redelivery) leaves no row. The message itself is in the message archive under
the same id, with its sender and control id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from gateway.db.bulk import BulkInsert
from gateway.db.schema import resource_provenance


@dataclass(frozen=True, slots=True)
class ProvenanceRecord:
    message_id: str
    type: str
    id: str
    version_id: int
    outcome: str
    superseded_by: str | None
    recorded_at: datetime


#: The columns of a provenance row, in the order ``record`` takes them.
COLUMNS = ("message_id", "type", "id", "version_id", "outcome", "superseded_by", "recorded_at")
_INSERT = BulkInsert(resource_provenance, COLUMNS, conflict="ON CONFLICT DO NOTHING")


def record(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert provenance rows (tuples in ``COLUMNS`` order) in ``conn``'s transaction; a row
    already there (a redelivery) is kept."""
    _INSERT.run(conn, rows)


def for_message(engine: Engine, message_id: str) -> list[ProvenanceRecord]:
    """What one message did, by resource."""
    table = resource_provenance
    stmt = select(table).where(table.c.message_id == message_id).order_by(table.c.type, table.c.id, table.c.version_id)
    return _query(engine, stmt)


def for_resource(engine: Engine, resource_type: str, resource_id: str) -> list[ProvenanceRecord]:
    """Which messages made (or tried to change) one resource, oldest version first."""
    table = resource_provenance
    stmt = (
        select(table)
        .where(table.c.type == resource_type, table.c.id == resource_id)
        .order_by(table.c.version_id, table.c.recorded_at)
    )
    return _query(engine, stmt)


def superseded(engine: Engine, limit: int = 100) -> list[ProvenanceRecord]:
    """The latest writes skipped because newer data was already stored, newest first."""
    table = resource_provenance
    stmt = select(table).where(table.c.outcome == "superseded").order_by(table.c.recorded_at.desc()).limit(limit)
    return _query(engine, stmt)


def _query(engine: Engine, stmt: Any) -> list[ProvenanceRecord]:
    with engine.connect() as conn:
        return [
            ProvenanceRecord(r.message_id, r.type, r.id, r.version_id, r.outcome, r.superseded_by, r.recorded_at)
            for r in conn.execute(stmt)
        ]
