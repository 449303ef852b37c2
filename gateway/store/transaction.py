"""Apply the entries of a FHIR transaction Bundle inside one database transaction (http.html#transaction).

Concurrency: one ordered ``INSERT ... ON CONFLICT DO UPDATE ... WHERE false`` claims every touched
row in (type, id) order: a missing row is inserted, an existing one is locked (PostgreSQL locks rows
the ON CONFLICT action skips). Taking all row locks in one global order keeps concurrent
transactions from deadlocking. On SQLite the caller's BEGIN IMMEDIATE already serializes writers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import bindparam, delete, false, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.errors import DeliveryError
from gateway.store.fhir_dates import format_instant
from gateway.store.index import IndexRows, index_rows
from gateway.store.resource_tables import SEARCH_TABLES, fhir_resource, fhir_resource_history

Outcome = Literal["created", "updated", "unchanged", "deleted"]

# Bundle.entry.request.url of a PUT or DELETE: [type]/[id] (http.html#update, datatypes.html#id).
_REQUEST_URL = re.compile(r"/?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")
# Ids per IN list: well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500
_HISTORY_COLUMNS = ("type", "id", "version_id", "last_updated", "deleted", "content")


@dataclass(frozen=True, slots=True)
class AppliedEntry:
    type: str
    id: str
    #: Version after the entry was applied; 0 when a DELETE found nothing to delete.
    version_id: int
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What a transaction did, one item per Bundle entry, in entry order."""

    entries: tuple[AppliedEntry, ...]

    def __iter__(self) -> Iterator[AppliedEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def changed(self) -> bool:
        return any(entry.outcome != "unchanged" for entry in self.entries)


@dataclass(frozen=True, slots=True)
class Change:
    """One checked Bundle entry."""

    position: int
    type: str
    id: str
    method: Literal["PUT", "DELETE"]
    resource: dict[str, Any] | None
    content_hash: str

    @property
    def key(self) -> tuple[str, str]:
        return self.type, self.id


@dataclass(frozen=True, slots=True)
class _Current:
    version_id: int
    content_hash: str
    deleted: bool


def content_hash(resource: dict[str, Any]) -> str:
    """sha256 of the resource as canonical JSON (sorted keys) without ``meta``: equal content, equal hash."""
    body = {key: value for key, value in resource.items() if key != "meta"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def plan_changes(bundle: Any) -> list[Change]:
    """Check the Bundle and list its changes; every problem raises DeliveryError naming the entry."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DeliveryError("not a FHIR Bundle")
    if bundle.get("type") != "transaction":
        raise DeliveryError(f"Bundle.type must be 'transaction', got {bundle.get('type')!r}")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise DeliveryError("Bundle.entry must be a list")
    changes: list[Change] = []
    seen: set[tuple[str, str]] = set()
    for position, entry in enumerate(entries):
        change = _check_entry(position, entry)
        if change.key in seen:
            # A transaction must not touch one resource twice (http.html#trules).
            raise DeliveryError(f"Bundle.entry[{position}]: {change.type}/{change.id} appears twice in the transaction")
        seen.add(change.key)
        changes.append(change)
    return changes


def _check_entry(position: int, entry: Any) -> Change:
    where = f"Bundle.entry[{position}]"
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict):
        raise DeliveryError(f"{where}: has no request")
    url, method = request.get("url"), request.get("method")
    match = _REQUEST_URL.fullmatch(url) if isinstance(url, str) else None
    if not match:
        raise DeliveryError(f"{where}: request.url {url!r} is not [type]/[id]")
    resource_type, resource_id = match.groups()
    if method == "DELETE":
        return Change(position, resource_type, resource_id, "DELETE", None, "")
    if method != "PUT":
        raise DeliveryError(f"{where}: request.method {method!r} is not supported (PUT or DELETE)")
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise DeliveryError(f"{where}: PUT without a resource")
    if resource.get("resourceType") != resource_type or resource.get("id") != resource_id:
        found = f"{resource.get('resourceType')}/{resource.get('id')}"
        raise DeliveryError(f"{where}: resource {found} does not match request.url {url}")
    try:
        digest = content_hash(resource)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise DeliveryError(f"{where}: resource is not JSON: {exc}") from None
    return Change(position, resource_type, resource_id, "PUT", resource, digest)


def write_changes(conn: Connection, changes: list[Change], now: datetime) -> dict[int, AppliedEntry]:
    """Apply ``changes`` in ``conn``'s open transaction; returns the outcome by entry position."""
    ordered = sorted(changes, key=lambda change: change.key)
    first_versions = [_first_version(change, now) for change in ordered]
    claimed = _claim(conn, first_versions)
    # A DELETE of a missing resource claimed it with a placeholder row: drop that again.
    _delete_current(conn, [c.key for c in ordered if c.method == "DELETE" and c.key in claimed])
    current = _read_current(conn, [c.key for c in ordered if c.key not in claimed])

    applied: dict[int, AppliedEntry] = {}
    history: list[dict[str, Any]] = []  # every new version
    replaced: list[dict[str, Any]] = []  # new versions of rows that existed before
    rows = IndexRows()
    for change, first in zip(ordered, first_versions):
        existing = current.get(change.key)
        if change.key in claimed:
            if change.method == "DELETE":  # deleting what is not there: nothing to do
                applied[change.position] = AppliedEntry(change.type, change.id, 0, "unchanged")
                continue
            history.append(first)
            rows.extend(index_rows(change.type, change.id, change.resource or {}))
            applied[change.position] = AppliedEntry(change.type, change.id, 1, "created")
            continue
        assert existing is not None
        outcome: Outcome
        if change.method == "DELETE":
            if existing.deleted:
                applied[change.position] = AppliedEntry(change.type, change.id, existing.version_id, "unchanged")
                continue
            version, outcome, content = existing.version_id + 1, "deleted", None
        elif not existing.deleted and existing.content_hash == change.content_hash:
            applied[change.position] = AppliedEntry(change.type, change.id, existing.version_id, "unchanged")
            continue
        else:
            version = existing.version_id + 1
            outcome = "created" if existing.deleted else "updated"  # a PUT re-creates a deleted resource
            content = _stamped(change.resource or {}, version, now)
            rows.extend(index_rows(change.type, change.id, change.resource or {}))
        history.append(_version_row(change, version, now, content))
        replaced.append(history[-1])
        applied[change.position] = AppliedEntry(change.type, change.id, version, outcome)

    _update_current(conn, replaced)
    if history:
        conn.execute(insert(fhir_resource_history), [{k: v[k] for k in _HISTORY_COLUMNS} for v in history])
    drop_index_rows(conn, [(v["type"], v["id"]) for v in replaced])
    insert_index_rows(conn, rows)
    return applied


def drop_index_rows(conn: Connection, keys: list[tuple[str, str]]) -> None:
    for resource_type, ids in _by_type(keys):
        for table in SEARCH_TABLES.values():
            conn.execute(delete(table).where(table.c.type == resource_type, table.c.id.in_(ids)))


def insert_index_rows(conn: Connection, rows: IndexRows) -> None:
    for kind, batch in (
        ("token", rows.tokens),
        ("string", rows.strings),
        ("date", rows.dates),
        ("reference", rows.references),
    ):
        if batch:
            conn.execute(insert(SEARCH_TABLES[kind]), batch)


def _first_version(change: Change, now: datetime) -> dict[str, Any]:
    """The row a missing resource gets: version 1, or for a DELETE a placeholder removed again."""
    if change.method == "DELETE":
        return _version_row(change, 0, now, None)
    return _version_row(change, 1, now, _stamped(change.resource or {}, 1, now))


def _claim(conn: Connection, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert missing rows and lock existing ones, in the given order; returns the keys inserted."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(fhir_resource)
    # DO UPDATE ... WHERE false changes nothing, but PostgreSQL locks the conflicting row
    # (sql-insert.html, ON CONFLICT: "all rows will be locked when the DO UPDATE action is taken").
    stmt = stmt.on_conflict_do_update(
        index_elements=[fhir_resource.c.type, fhir_resource.c.id],
        set_={"version_id": fhir_resource.c.version_id},
        where=false(),
    )
    result = conn.execute(stmt.returning(fhir_resource.c.type, fhir_resource.c.id), rows)
    return {(row.type, row.id) for row in result}


def _read_current(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], _Current]:
    table, found = fhir_resource, {}
    for resource_type, ids in _by_type(keys):
        stmt = select(table.c.id, table.c.version_id, table.c.content_hash, table.c.deleted).where(
            table.c.type == resource_type, table.c.id.in_(ids)
        )
        for row in conn.execute(stmt):
            found[(resource_type, row.id)] = _Current(row.version_id, row.content_hash, row.deleted)
    return found


def _delete_current(conn: Connection, keys: list[tuple[str, str]]) -> None:
    for resource_type, ids in _by_type(keys):
        conn.execute(delete(fhir_resource).where(fhir_resource.c.type == resource_type, fhir_resource.c.id.in_(ids)))


def _update_current(conn: Connection, versions: list[dict[str, Any]]) -> None:
    if not versions:
        return
    table = fhir_resource
    columns = ("version_id", "last_updated", "deleted", "content_hash", "content")
    stmt = (
        update(table)
        .where(table.c.type == bindparam("key_type"), table.c.id == bindparam("key_id"))
        .values({name: bindparam(f"new_{name}") for name in columns})
    )
    params = [{"key_type": v["type"], "key_id": v["id"]} | {f"new_{k}": v[k] for k in columns} for v in versions]
    conn.execute(stmt, params)


def _version_row(change: Change, version: int, now: datetime, content: str | None) -> dict[str, Any]:
    """A fhir_resource row for a new version; ``content`` None means deleted."""
    return {
        "type": change.type,
        "id": change.id,
        "version_id": version,
        "last_updated": now,
        "deleted": content is None,
        "content_hash": change.content_hash if content is not None else "",
        "content": content,
    }


def _stamped(resource: dict[str, Any], version: int, now: datetime) -> str:
    """The stored JSON: the resource with meta.versionId and meta.lastUpdated set (resource.html#Meta)."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    stamped: dict[str, Any] = {"resourceType": resource["resourceType"], "id": resource["id"]}
    stamped["meta"] = {"versionId": str(version), "lastUpdated": format_instant(now), **meta}
    stamped.update((k, v) for k, v in resource.items() if k not in stamped)
    return orjson.dumps(stamped).decode()


def _by_type(keys: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Group keys by type, sorted, in chunks small enough for one IN list."""
    grouped: dict[str, list[str]] = {}
    for resource_type, resource_id in sorted(set(keys)):
        grouped.setdefault(resource_type, []).append(resource_id)
    for resource_type, ids in grouped.items():
        for start in range(0, len(ids), _CHUNK):
            yield resource_type, ids[start : start + _CHUNK]
