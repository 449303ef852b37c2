"""Apply the changes of many transaction Bundles in one database transaction, each all or nothing.

``write_batch`` takes jobs (the checked changes of one Bundle, and the source message they come
from) and applies them in order, in the caller's open transaction, with a constant number of
statements per batch rather than per entry:

1. claim every touched row in (type, id) order with one ``INSERT ... ON CONFLICT DO UPDATE ...
   WHERE false``: a missing row is inserted (provisionally, as its first change would make it),
   an existing one is locked (PostgreSQL locks rows the ON CONFLICT action skips). Taking all row
   locks of a batch in one global order keeps concurrent batches from deadlocking; on SQLite the
   caller's BEGIN IMMEDIATE already serializes writers;
2. read the claimed rows, then decide every change in memory: created, updated, deleted,
   unchanged (same content), or superseded (gateway/store/ordering.py);
3. write the differences: changed rows, new versions, search index rows, provenance rows;
4. when a Patient was merged away (gateway/store/merges.py), give every resource that references
   it a new version pointing at the survivor.

A job's changes are all decided before any is written, and nothing in step 2 can fail, so a
database error fails the whole batch (the caller retries the jobs one by one) and never half a job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, false, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from gateway.store import merges as merge_rules
from gateway.store import provenance
from gateway.store.index import IndexRows, index_rows
from gateway.store.ordering import Source, is_newer, is_older, stored_key
from gateway.store.resource_tables import SEARCH_TABLES, fhir_resource, fhir_resource_history
from gateway.store.transaction import (
    _HISTORY_COLUMNS,
    AppliedEntry,
    ApplyResult,
    Change,
    Outcome,
    canonical_json,
    stamped,
)

Key = tuple[str, str]
# Ids per IN list: well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500
_ROW_COLUMNS = (
    "version_id",
    "last_updated",
    "deleted",
    "content_hash",
    "content",
    "source_time",
    "source_sender",
    "source_seq",
    "source_message",
)


@dataclass(frozen=True, slots=True)
class Job:
    """The changes of one Bundle and the message they come from (None: not from a message)."""

    changes: list[Change]
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class _Row:
    """A fhir_resource row without its key. version_id 0 is a placeholder or a tombstone."""

    version_id: int
    last_updated: datetime
    deleted: bool
    content_hash: str
    content: str | None
    source_time: datetime | None = None
    source_sender: str | None = None
    source_seq: int | None = None
    source_message: str | None = None


@dataclass
class _Prepared:
    """A PUT's resource after re-pointing references to merged-away Patients."""

    generation: int
    resource: dict[str, Any]
    digest: str


def write_batch(conn: Connection, jobs: list[Job], now: datetime) -> list[ApplyResult]:
    """Apply ``jobs`` in order inside ``conn``'s open transaction; one result per job."""
    merges = merge_rules.MergeMap()
    candidates = {c.id for job in jobs for c in job.changes if c.type == "Patient"}
    for job in jobs:
        for change in job.changes:
            candidates |= merge_rules.referenced_patients(change.body)
    merges.load(conn, candidates)

    batch = _Batch(conn, now, merges)
    provisional: dict[Key, _Row] = {}
    for job in jobs:
        for change in job.changes:
            if change.key not in provisional:
                provisional[change.key] = batch.first_row(change, job.source)
    batch.lock(provisional)
    results = [batch.apply(job) for job in jobs]
    batch.flush()

    for index, (message_id, old_ids) in sorted(batch.moves.items()):
        moved = _move_references(conn, now, merges, message_id, old_ids)
        results[index] = replace(results[index], moved=tuple(moved))
    return results


class _Batch:
    """The in-memory state of one batch: rows as the database holds them, and as the jobs leave them."""

    def __init__(self, conn: Connection, now: datetime, merges: merge_rules.MergeMap):
        self.conn = conn
        self.now = now
        self.merges = merges
        self.generation = 0
        #: What the database row holds now (our provisional insert for claimed keys).
        self.stored: dict[Key, _Row | None] = {}
        #: The row as the jobs applied so far leave it; None: the resource does not exist.
        self.state: dict[Key, _Row | None] = {}
        #: Keys whose row existed before this batch (they may have index rows to drop).
        self.existed: set[Key] = set()
        self.resources: dict[Key, dict[str, Any]] = {}
        self.reindex: set[Key] = set()
        self.history: list[dict[str, Any]] = []
        self.provenance: list[dict[str, Any]] = []
        self.merged: dict[str, tuple[str, str | None]] = {}
        self.unmerged: set[str] = set()
        #: Job index -> (message id, Patients it merged away): references to move after the flush.
        self.moves: dict[int, tuple[str | None, set[str]]] = {}
        self._prepared: dict[int, _Prepared] = {}
        self._job_index = 0

    # -- reading ----------------------------------------------------------------------------------
    def first_row(self, change: Change, source: Source | None) -> _Row:
        """The row ``change`` makes when it finds nothing: what the claim inserts for a new key."""
        if change.method == "DELETE":
            return _Row(0, self.now, True, "", None, **_source_columns(source))
        prepared = self.prepare(change)
        content = stamped(prepared.resource, 1, self.now)
        return _Row(1, self.now, False, prepared.digest, content, **_source_columns(source))

    def lock(self, provisional: dict[Key, _Row]) -> None:
        """Claim the rows of ``provisional``'s keys and read the ones that already existed."""
        keys = sorted(provisional)
        inserted = _claim(self.conn, [{"type": k[0], "id": k[1], **_columns(provisional[k])} for k in keys])
        existing = _read_rows(self.conn, [k for k in keys if k not in inserted])
        for key in keys:
            if key in inserted:
                self.stored[key], self.state[key] = provisional[key], None
            else:
                row = existing.get(key)
                self.stored[key] = self.state[key] = row
                if row is not None:
                    self.existed.add(key)

    def prepare(self, change: Change) -> _Prepared:
        """The PUT's resource with references to merged-away Patients re-pointed (cached per merge state)."""
        cached = self._prepared.get(id(change))
        if cached is not None and cached.generation == self.generation:
            return cached
        resource, digest = change.resource or {}, change.content_hash
        if self.merges.direct:
            rewritten = self.merges.rewrite(change.type, resource, merge_rules.referenced_patients(change.body))
            if rewritten is not None:
                resource, digest = rewritten, hashlib.sha256(canonical_json(rewritten)).hexdigest()
        prepared = _Prepared(self.generation, resource, digest)
        self._prepared[id(change)] = prepared
        return prepared

    # -- deciding ---------------------------------------------------------------------------------
    def apply(self, job: Job) -> ApplyResult:
        entries = tuple(self._apply_change(change, job.source) for change in job.changes)
        self._job_index += 1
        return ApplyResult(entries)

    def _apply_change(self, change: Change, source: Source | None) -> AppliedEntry:
        state = self.state[change.key]
        stored_source = stored_key(state) if state is not None else None
        # The resource as a reader sees it: None when missing, deleted, or a tombstone.
        live = state if state is not None and state.version_id > 0 and not state.deleted else None
        if change.method == "DELETE":
            if live is None:
                return self._delete_nothing(change, state, source)
            if is_older(source, stored_source):
                return self._superseded(change, live, source)
            return self._write(change, live, None, "", source, "deleted")

        prepared = self.prepare(change)
        if live is not None and live.content_hash == prepared.digest:
            if is_newer(source, stored_source):
                self.state[change.key] = replace(live, **_source_columns(source))
            return AppliedEntry(change.type, change.id, live.version_id, "unchanged")
        if state is not None and is_older(source, stored_source):
            return self._superseded(change, state, source)
        outcome: Outcome = "updated" if live is not None else "created"  # a PUT re-creates a deleted one
        entry = self._write(change, state, prepared.resource, prepared.digest, source, outcome)
        if change.type == "Patient":
            self._track_merge(change.id, prepared.resource, source)
        return entry

    def _delete_nothing(self, change: Change, state: _Row | None, source: Source | None) -> AppliedEntry:
        """A DELETE of what is not there. The tombstone keeps the newest source, so that an older
        message cannot create the resource afterwards."""
        if is_newer(source, stored_key(state) if state is not None else None):
            base = state or _Row(0, self.now, True, "", None)
            self.state[change.key] = replace(base, **_source_columns(source))
        return AppliedEntry(change.type, change.id, state.version_id if state else 0, "unchanged")

    def _write(
        self,
        change: Change,
        state: _Row | None,
        resource: dict[str, Any] | None,
        digest: str,
        source: Source | None,
        outcome: Outcome,
        *,
        keep_source: bool = False,
        credit: str | None = None,
    ) -> AppliedEntry:
        """Make a new version: ``resource`` None deletes."""
        key = change.key
        version = (state.version_id if state else 0) + 1
        content = stamped(resource, version, self.now) if resource is not None else None
        columns = _source_columns(source) if not keep_source else _kept_source(state)
        self.state[key] = _Row(version, self.now, resource is None, digest, content, **columns)
        self.history.append(
            {"type": change.type, "id": change.id, "version_id": version, "last_updated": self.now}
            | {"deleted": resource is None, "content": content}
        )
        self.reindex.add(key)
        if resource is not None:
            self.resources[key] = resource
        message = credit or (source.message_id if source else None)
        if message:
            self._record(message, change, version, outcome, None)
        return AppliedEntry(change.type, change.id, version, outcome)

    def _superseded(self, change: Change, state: _Row, source: Source | None) -> AppliedEntry:
        if source is not None:
            self._record(source.message_id, change, state.version_id, "superseded", state.source_message)
        return AppliedEntry(change.type, change.id, state.version_id, "superseded", state.source_message)

    def _record(self, message_id: str, change: Change, version: int, outcome: Outcome, by: str | None) -> None:
        self.provenance.append(
            {"message_id": message_id, "type": change.type, "id": change.id, "version_id": version}
            | {"outcome": outcome, "superseded_by": by, "recorded_at": self.now}
        )

    def _track_merge(self, patient_id: str, patient: dict[str, Any], source: Source | None) -> None:
        survivor = merge_rules.merge_target(patient)
        previous = self.merges.direct.get(patient_id)
        if survivor and survivor != patient_id:
            if previous != survivor:
                message_id = source.message_id if source else None
                self.moves.setdefault(self._job_index, (message_id, set()))[1].add(patient_id)
            self.merges.direct[patient_id] = survivor
            self.merged[patient_id] = (survivor, source.message_id if source else None)
            self.unmerged.discard(patient_id)
        elif previous is not None:
            del self.merges.direct[patient_id]
            self.merged.pop(patient_id, None)
            self.unmerged.add(patient_id)
        else:
            return
        self.generation += 1

    # -- writing ----------------------------------------------------------------------------------
    def flush(self) -> None:
        changed, dropped = [], []
        for key, final in self.state.items():
            if final is None:
                if self.stored[key] is not None:  # our placeholder for a DELETE of nothing
                    dropped.append(key)
            elif final != self.stored[key]:
                new = {f"new_{name}": value for name, value in _columns(final).items()}
                changed.append({"key_type": key[0], "key_id": key[1], **new})
        _update_rows(self.conn, changed)
        _delete_rows(self.conn, dropped)
        if self.history:
            self.conn.execute(
                insert(fhir_resource_history), [{k: v[k] for k in _HISTORY_COLUMNS} for v in self.history]
            )
        drop_index_rows(self.conn, [key for key in self.reindex if key in self.existed])
        rows = IndexRows()
        for key in sorted(self.reindex):
            final = self.state[key]
            if final is not None and not final.deleted:
                rows.extend(index_rows(key[0], key[1], self.resources[key]))
        insert_index_rows(self.conn, rows)
        provenance.record(self.conn, self.provenance)
        if self.merged or self.unmerged:
            merge_rules.save(self.conn, self.merged, self.unmerged)


def _move_references(
    conn: Connection, now: datetime, merges: merge_rules.MergeMap, message_id: str | None, old_ids: set[str]
) -> list[AppliedEntry]:
    """New versions of every resource referencing a Patient in ``old_ids``, pointing at its survivor."""
    keys = sorted({key for old in old_ids for key in merge_rules.referrers(conn, old)})
    if not keys:
        return []
    mover = _Batch(conn, now, merges)
    mover.lock({key: _Row(0, now, True, "", None) for key in keys})
    moved = []
    for key in keys:
        state = mover.state[key]
        if state is None or state.deleted or state.content is None:
            continue
        resource = orjson.loads(state.content)
        rewritten = merges.rewrite(key[0], resource, merge_rules.referenced_patients(canonical_json(resource)))
        if rewritten is None:
            continue
        digest = hashlib.sha256(canonical_json(rewritten)).hexdigest()
        change = Change(0, key[0], key[1], "PUT", rewritten, digest)
        moved.append(mover._write(change, state, rewritten, digest, None, "moved", keep_source=True, credit=message_id))
    mover.flush()
    return moved


def _columns(row: _Row) -> dict[str, Any]:
    """The row as column values (dataclasses.asdict would deep-copy the content)."""
    return {name: getattr(row, name) for name in _ROW_COLUMNS}


def _source_columns(source: Source | None) -> dict[str, Any]:
    if source is None:
        return {"source_time": None, "source_sender": None, "source_seq": None, "source_message": None}
    return {
        "source_time": source.time,
        "source_sender": source.sender,
        "source_seq": source.seq,
        "source_message": source.message_id,
    }


def _kept_source(state: _Row | None) -> dict[str, Any]:
    if state is None:
        return _source_columns(None)
    return {
        "source_time": state.source_time,
        "source_sender": state.source_sender,
        "source_seq": state.source_seq,
        "source_message": state.source_message,
    }


def _claim(conn: Connection, rows: list[dict[str, Any]]) -> set[Key]:
    """Insert missing rows and lock existing ones, in the given order; returns the keys inserted."""
    if not rows:
        return set()
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


def _read_rows(conn: Connection, keys: list[Key]) -> dict[Key, _Row]:
    table, found = fhir_resource, {}
    for resource_type, ids in _by_type(keys):
        stmt = select(table.c.id, *(table.c[name] for name in _ROW_COLUMNS)).where(
            table.c.type == resource_type, table.c.id.in_(ids)
        )
        for row in conn.execute(stmt):
            found[(resource_type, row.id)] = _Row(*(row._mapping[name] for name in _ROW_COLUMNS))
    return found


def _update_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = fhir_resource
    stmt = (
        update(table)
        .where(table.c.type == bindparam("key_type"), table.c.id == bindparam("key_id"))
        .values({name: bindparam(f"new_{name}") for name in _ROW_COLUMNS})
    )
    conn.execute(stmt, rows)


def _delete_rows(conn: Connection, keys: list[Key]) -> None:
    for resource_type, ids in _by_type(keys):
        conn.execute(delete(fhir_resource).where(fhir_resource.c.type == resource_type, fhir_resource.c.id.in_(ids)))


def drop_index_rows(conn: Connection, keys: list[Key]) -> None:
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


def _by_type(keys: Iterable[Key]) -> Iterator[tuple[str, list[str]]]:
    """Group keys by type, sorted, in chunks small enough for one IN list."""
    grouped: dict[str, list[str]] = {}
    for resource_type, resource_id in sorted(set(keys)):
        grouped.setdefault(resource_type, []).append(resource_id)
    for resource_type, ids in grouped.items():
        for start in range(0, len(ids), _CHUNK):
            yield resource_type, ids[start : start + _CHUNK]
