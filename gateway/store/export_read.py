"""Reading the store for a $export: one resource type in keyset pages by id, each resource as it was
at the export's transactionTime, without parsing it (the stored JSON is the NDJSON line).

A page reads current rows (fhir_resource, by its primary key (type, id)); a row written after the
transactionTime is replaced by the version current then (fhir_resource_history), or left out when
the resource did not exist then. So the files hold each resource once, as of one instant, however
the store changes while the export runs (the Bulk Data IG asks no more than "not guaranteed" of
later changes; this gives exactly the state at transactionTime). With ``_since``, only versions
written at or after it are exported, and resources deleted in [since, transactionTime] are listed
for the manifest's ``deleted`` files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, exists, false, or_, select, tuple_
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import fhir_resource, fhir_resource_history, fhir_search_reference
from gateway.store.compartments import compartment_parameters


@dataclass(frozen=True, slots=True)
class ExportScope:
    """What an export takes: ``level`` system, patient or group; ``members`` the Group's Patient ids."""

    level: str
    transaction_time: datetime
    since: datetime | None = None
    members: tuple[str, ...] | None = None


@dataclass(slots=True)
class ExportPage:
    #: The NDJSON lines (stored JSON, no newline) of the resources to write.
    lines: list[str] = field(default_factory=list)
    #: ids deleted between ``since`` and the transactionTime (only with ``since``).
    deleted: list[str] = field(default_factory=list)
    #: The id of the last row read (the cursor to go on after); None when the type is finished.
    last_id: str | None = None


def read_page(conn: Connection, resource_type: str, after: str, scope: ExportScope, limit: int) -> ExportPage:
    """The next page of ``resource_type`` after id ``after``."""
    rows = conn.execute(_page_query(resource_type, after, scope, limit)).all()
    page = ExportPage(last_id=rows[-1][0] if rows else None)
    moment, since = scope.transaction_time, scope.since
    lines, later = page.lines, []
    # The rows are tuples, unpacked, and the database compares the times (no datetime is made per
    # row): this loop and the rows' conversion are most of the exporter's own processor time.
    for resource_id, later_than_moment, deleted, content in rows:
        if later_than_moment:
            later.append(resource_id)
        elif not deleted:
            lines.append(content)
        elif since is not None:  # the query's since filter kept only deletions at or after it
            page.deleted.append(resource_id)
    if later:
        for resource_id, version in _versions_then(conn, resource_type, later, moment).items():
            if since is not None and version.last_updated < since:
                continue
            if not version.deleted:
                lines.append(version.content)
            elif since is not None:
                page.deleted.append(resource_id)
    return page


def group_members(conn: Connection, group_id: str) -> tuple[str, ...] | None:
    """The Patient ids a stored Group's ``member.entity`` references; None when there is no such Group."""
    content = conn.execute(
        select(fhir_resource.c.content).where(
            fhir_resource.c.type == "Group", fhir_resource.c.id == group_id, fhir_resource.c.deleted == false()
        )
    ).scalar_one_or_none()
    if content is None:
        return None
    members = set()
    for member in fhirjson.loads(content).get("member", ()):
        reference = (member.get("entity") or {}).get("reference", "") if isinstance(member, dict) else ""
        kind, _, patient = str(reference).rpartition("/")
        if kind.endswith("Patient") and patient:
            members.add(patient)
    return tuple(sorted(members))


def stored_types(conn: Connection) -> list[str]:
    """Every resource type with a row in the store, by a skip scan of the primary key (one short
    index probe per type, not a scan of the table)."""
    found: list[str] = []
    while True:
        query = select(fhir_resource.c.type).order_by(fhir_resource.c.type).limit(1)
        if found:
            query = query.where(fhir_resource.c.type > found[-1])
        following = conn.execute(query).scalar_one_or_none()
        if following is None:
            return found
        found.append(following)


def _page_query(resource_type: str, after: str, scope: ExportScope, limit: int) -> Select[Any]:
    t = fhir_resource.c
    later = (t.last_updated > scope.transaction_time).label("later")
    query = select(t.id, later, t.deleted, t.content).where(t.type == resource_type, t.id > after, t.version_id > 0)
    if scope.since is not None:
        # A row changed after transactionTime is newer than since too: its version then is checked later.
        query = query.where(t.last_updated >= scope.since)
    else:
        query = query.where(or_(t.deleted == false(), t.last_updated > scope.transaction_time))
    if scope.level != "system":
        if resource_type == "Patient":
            if scope.members is not None:
                query = query.where(t.id.in_(scope.members))
        else:
            r = fhir_search_reference.c
            linked = exists().where(
                r.type == resource_type,
                r.id == t.id,
                r.param.in_(compartment_parameters(resource_type)),
                r.target_type == "Patient",
            )
            if scope.members is not None:
                linked = linked.where(r.target_id.in_(scope.members))
            query = query.where(linked)
    return query.order_by(t.id).limit(limit)


def _versions_then(conn: Connection, resource_type: str, ids: list[str], moment: datetime) -> dict[str, Any]:
    """The version of each of ``ids`` current at ``moment`` (absent when none existed then)."""
    h = fhir_resource_history.c
    newest = (
        select(h.id, fhir_resource_history.c.version_id)
        .where(h.type == resource_type, h.id.in_(ids), h.last_updated <= moment)
        .order_by(h.id, h.version_id.desc())
    )
    chosen: dict[str, int] = {}
    for row in conn.execute(newest):
        chosen.setdefault(row.id, row.version_id)
    if not chosen:
        return {}
    versions = select(h.id, h.last_updated, h.deleted, h.content).where(
        h.type == resource_type, tuple_(h.id, h.version_id).in_(list(chosen.items()))
    )
    return {row.id: row for row in conn.execute(versions)}
