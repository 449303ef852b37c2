"""Retention of the audit trail: AuditEvents recorded before a cut-off are deleted for good.

Every AuditEvent (reads and searches, failed authentications, operator actions) is kept for
``HL7GW_AUDIT_RETENTION_DAYS`` after its ``recorded`` instant, then deleted with its versions and
its search index rows: a hard delete, in batches of ``batch`` resources per transaction, so a long
backlog never holds the database's write lock for long. Expired events are found through the
``date`` index (AuditEvent.recorded), oldest first.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, select
from sqlalchemy.engine import Engine

from gateway.db.schema import fhir_resource, fhir_resource_history, fhir_search_date
from gateway.store.resource_rows import drop_index_rows
from gateway.store.resources import ResourceStore

_TYPE = "AuditEvent"


def purge_expired(engine: Engine, before: datetime, batch: int = 1000) -> int:
    """Delete every AuditEvent recorded wholly before ``before`` (naive UTC); the number deleted."""
    store, dates, purged = ResourceStore(engine), fhir_search_date, 0
    expired = (
        select(dates.c.id)
        .where(dates.c.type == _TYPE, dates.c.param == "date", dates.c.low < before, dates.c.high <= before)
        .order_by(dates.c.low, dates.c.id)
        .limit(batch)
    )
    while True:
        with store.transaction() as conn:
            ids = sorted(set(conn.execute(expired).scalars()))
            if not ids:
                return purged
            for table in (fhir_resource, fhir_resource_history):
                conn.execute(delete(table).where(and_(table.c.type == _TYPE, table.c.id.in_(ids))))
            drop_index_rows(conn, [(_TYPE, event_id) for event_id in ids])
            conn.commit()
        purged += len(ids)
