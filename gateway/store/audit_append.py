"""Append new AuditEvents to the store: the rows the write path makes of them, without its work.

An AuditEvent of the access audit trail is new (a fresh uuid4 id), never updated, never from a
message and never a Patient, so of the write path (gateway/store/writer.py) only the last step
applies: one fhir_resource row (version 1), its history row and its search index rows, inserted
in bulk (gateway/store/resource_rows.py). Planning, claiming and reading rows, the merge map and
the content cache cost the trail's thread more than the API's own search did.
tests/test_audit_append.py checks that these are exactly the rows ``ResourceStore.apply_bundle``
makes of the same events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from gateway.store.fhir_dates import format_instant
from gateway.store.index import IndexRows, index_rows
from gateway.store.resource_rows import StoredRow, insert_history, insert_index_rows, write_rows
from gateway.store.transaction import content_hash, stamp

_TYPE = "AuditEvent"


@dataclass
class Prepared:
    """The rows of some AuditEvents, made before the transaction that inserts them."""

    final: dict[tuple[str, str], StoredRow | None] = field(default_factory=dict)
    history: list[tuple[Any, ...]] = field(default_factory=list)
    rows: IndexRows = field(default_factory=IndexRows)


def prepare(events: Sequence[dict[str, Any]], now: datetime, pause: Callable[[], None] | None = None) -> Prepared:
    """The rows of ``events`` as new AuditEvents written at ``now`` (naive UTC, milliseconds); ``pause`` is
    called between events (the trail's thread lets the API's threads run)."""
    last_updated = format_instant(now)
    prepared = Prepared()
    for event in events:
        content = stamp(event, 1, last_updated)
        prepared.final[(_TYPE, event["id"])] = StoredRow(1, now, False, content_hash(event), content)
        prepared.history.append((_TYPE, event["id"], 1, now, False, content))
        prepared.rows.extend(index_rows(_TYPE, event["id"], event))
        if pause is not None:
            pause()
    return prepared


def insert(conn: Connection, prepared: Prepared) -> int:
    """Insert prepared AuditEvents in ``conn``'s open transaction; the number inserted. Their ids must be
    new: an id already stored makes the insert fail (the caller's transaction then rolls back)."""
    write_rows(conn, dict.fromkeys(prepared.final), prepared.final)
    insert_index_rows(conn, prepared.rows)
    insert_history(conn, prepared.history)  # last: it holds the feed counter until commit
    return len(prepared.final)


def append_events(conn: Connection, events: Sequence[dict[str, Any]], now: datetime) -> int:
    """Insert ``events`` as new AuditEvents in ``conn``'s open transaction, written at ``now``."""
    return insert(conn, prepare(events, now))
