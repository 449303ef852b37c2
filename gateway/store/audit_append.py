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

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from gateway.store.fhir_dates import format_instant
from gateway.store.index import IndexRows, index_rows
from gateway.store.resource_rows import StoredRow, insert_history, insert_index_rows, write_rows
from gateway.store.transaction import content_hash, stamp

_TYPE = "AuditEvent"


def append_events(conn: Connection, events: Sequence[dict[str, Any]], now: datetime) -> int:
    """Insert ``events`` as new AuditEvents in ``conn``'s open transaction; the number inserted.

    ``now`` is their meta.lastUpdated (naive UTC, milliseconds). Ids must be new: an id already
    stored makes the insert fail (the caller's transaction then rolls back).
    """
    last_updated = format_instant(now)
    final: dict[tuple[str, str], StoredRow | None] = {}
    history: list[tuple[Any, ...]] = []
    rows = IndexRows()
    for event in events:
        content = stamp(event, 1, last_updated)
        final[(_TYPE, event["id"])] = StoredRow(1, now, False, content_hash(event), content)
        history.append((_TYPE, event["id"], 1, now, False, content))
        rows.extend(index_rows(_TYPE, event["id"], event))
    write_rows(conn, dict.fromkeys(final), final)
    insert_history(conn, history)
    insert_index_rows(conn, rows)
    return len(final)
