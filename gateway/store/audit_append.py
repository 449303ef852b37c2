"""Append new AuditEvents to the store: the rows the write path makes of them, without its work.

An AuditEvent of the access audit trail is new (a fresh uuid4 id), never updated, never from a
message and never a Patient, so of the write path (gateway/store/writer.py) only the last step
applies: one fhir_resource row (version 1), its history row and its search index rows, inserted
in bulk (gateway/store/resource_rows.py). tests/test_audit_append.py checks that these are exactly
the rows ``ResourceStore.apply_bundle`` makes of the same events.

The events of one access (one per Patient, alike but for their id and their Patient) form a
group: the index rows of its first event are made by ``index_rows``, and copied for the others
with the id and the Patient replaced. That is most of the saving: evaluating every search
parameter of every event cost the trail's thread more than the API's own search did.
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
#: The AuditEvents of one access, one per Patient; the Patient is the first entity (access_events.py).
Group = Sequence[dict[str, Any]]


def append_events(conn: Connection, groups: Sequence[Group], now: datetime) -> int:
    """Insert the AuditEvents of ``groups`` as new resources in ``conn``'s open transaction; the number inserted.

    ``now`` is their meta.lastUpdated (naive UTC, milliseconds). Ids must be new: an id already
    stored makes the insert fail (the caller's transaction then rolls back).
    """
    last_updated = format_instant(now)
    final: dict[tuple[str, str], StoredRow | None] = {}
    history: list[tuple[Any, ...]] = []
    rows = IndexRows()
    for group in groups:
        first: tuple[dict[str, Any], IndexRows] | None = None
        for event in group:
            content = stamp(event, 1, last_updated)
            final[(_TYPE, event["id"])] = StoredRow(1, now, False, content_hash(event), content)
            history.append((_TYPE, event["id"], 1, now, False, content))
            if first is None:
                first = (event, index_rows(_TYPE, event["id"], event))
                rows.extend(first[1])
            else:
                rows.extend(_rows_like(first, event))
    write_rows(conn, dict.fromkeys(final), final)
    insert_history(conn, history)
    insert_index_rows(conn, rows)
    return len(final)


def _rows_like(first: tuple[dict[str, Any], IndexRows], event: dict[str, Any]) -> IndexRows:
    """``event``'s index rows from those of ``first``, an event of the same access: same rows, another id and
    Patient. Made in full when the two differ otherwise (they never should)."""
    model, model_rows = first
    old, new = _patient_of(model), _patient_of(event)
    if old is None or new is None or not _alike(model, event):
        return index_rows(_TYPE, event["id"], event)
    event_id = event["id"]
    return IndexRows(
        tokens=[(t, event_id, p, a, b) for t, _, p, a, b in model_rows.tokens],
        strings=[(t, event_id, p, a, b) for t, _, p, a, b in model_rows.strings],
        dates=[(t, event_id, p, low, high) for t, _, p, low, high in model_rows.dates],
        references=[
            (t, event_id, p, kind, new if (kind == "Patient" and target == old) else target)
            for t, _, p, kind, target in model_rows.references
        ],
    )


def _patient_of(event: dict[str, Any]) -> str | None:
    entity = event["entity"][0] if event.get("entity") else {}
    reference = entity.get("what", {}).get("reference", "")
    if entity.get("role", {}).get("code") == "1" and reference.startswith("Patient/"):
        return str(reference.removeprefix("Patient/"))
    return None


def _alike(model: dict[str, Any], event: dict[str, Any]) -> bool:
    """True when the two differ in nothing but id and Patient, and the model names its Patient only once."""
    if model.keys() != event.keys() or len(model["entity"]) != len(event["entity"]):
        return False
    if any(model[key] is not event[key] and model[key] != event[key] for key in model if key not in ("id", "entity")):
        return False
    if any(a is not b and a != b for a, b in zip(model["entity"][1:], event["entity"][1:], strict=True)):
        return False
    patient = model["entity"][0]["what"]["reference"]
    named = [entity for entity in model["entity"] if entity.get("what", {}).get("reference") == patient]
    return len(named) == 1
