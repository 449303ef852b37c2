"""Apply the changes of many transaction Bundles in one database transaction, each all or nothing.

``write_batch`` takes jobs (the checked changes of one Bundle, and the source message they come
from) and applies them in order, in the caller's open transaction, with a constant number of
statements per batch rather than per entry:

1. on PostgreSQL, claim every touched row in (type, id) order with one ``INSERT ... ON CONFLICT
   DO UPDATE ... WHERE false``: a missing row is inserted (provisionally, as its first change
   would make it), an existing one is locked (PostgreSQL locks rows the ON CONFLICT action
   skips). Taking all row locks of a batch in one global order keeps concurrent batches from
   deadlocking. A key the writer's ``KnownRows`` saw stored is claimed with a placeholder instead
   of its content: the conflict discards the claimed values of an existing row, so making and
   sending its JSON is wasted (most of a message's resources exist, unchanged). The hint decides
   cost, never an answer: rows are locked and read as before, and a placeholder inserted after all
   (the hint was wrong, e.g. its batch rolled back) is a provisional row that step 3 overwrites
   with what the changes make, like any other. On SQLite the caller's BEGIN IMMEDIATE already
   serializes writers: nothing is claimed, and missing rows are inserted in step 3;
2. read the rows, then decide every change in memory: created, updated, deleted, unchanged
   (same content), or superseded (gateway/store/ordering.py);
3. write the differences: changed rows, search index rows, provenance rows
   (gateway/store/resource_rows.py);
4. when a Patient was merged away (gateway/store/merges.py), give every resource that references
   it a new version pointing at the survivor;
5. last, insert the new versions (of steps 3 and 4) into the history with their feed positions,
   which locks the feed counter until the caller commits (gateway/store/feed_positions.py): as
   late as possible, and after every row lock of the batch is held, so it neither waits long nor
   deadlocks with a writer that holds the counter.

A job's changes are all decided before any is written, and nothing in step 2 can fail, so a
database error fails the whole batch (the caller retries the jobs one by one) and never half a job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.journal import provenance
from gateway.lru import LRU
from gateway.store import merges as merge_rules
from gateway.store import resource_rows
from gateway.store.fhir_dates import format_instant
from gateway.store.index import IndexRows, rows_for_content
from gateway.store.ordering import Source, is_newer, is_older, stored_key
from gateway.store.resource_rows import StoredRow, drop_index_rows, insert_index_rows
from gateway.store.transaction import AppliedEntry, ApplyResult, Change, Outcome, canonical_json, stamp

Key = tuple[str, str]

#: How many keys a writer remembers as stored (``KnownRows``): the resources of some thousand messages.
KNOWN_ROWS = 32768


class KnownRows(LRU[Key, bool]):
    """The keys one writer saw with a row in fhir_resource, as of its last batches: a hint that
    decides what a claim carries (see the module docstring), never what a change does."""

    def __init__(self, size: int = KNOWN_ROWS):
        super().__init__(size)

    def has(self, key: Key) -> bool:
        return self.get(key)[0]


@dataclass(frozen=True, slots=True)
class Job:
    """The changes of one Bundle and the message they come from (None: not from a message)."""

    changes: list[Change]
    source: Source | None = None


@dataclass
class _Prepared:
    """A PUT's resource after re-pointing references to merged-away Patients."""

    generation: int
    resource: dict[str, Any]
    digest: str


def write_batch(conn: Connection, jobs: list[Job], now: datetime, known: KnownRows | None = None) -> list[ApplyResult]:
    """Apply ``jobs`` in order inside ``conn``'s open transaction; one result per job. ``known`` (the
    writer's own, kept across batches) makes PostgreSQL claims of stored rows cheaper."""
    merges = merge_rules.MergeMap()
    candidates = {c.id for job in jobs for c in job.changes if c.type == "Patient"}
    for job in jobs:
        for change in job.changes:
            candidates |= merge_rules.referenced_patients(change.body)
    merges.load(conn, candidates)

    batch = _Batch(conn, now, merges)
    first: dict[Key, tuple[Change, Source | None]] = {}
    for job in jobs:
        for change in job.changes:
            first.setdefault(change.key, (change, job.source))
    batch.lock(list(first), lambda key: batch.first_row(*first[key]), known)
    results = [batch.apply(job) for job in jobs]
    batch.flush()
    if known is not None and conn.dialect.name == "postgresql":
        for key, row in batch.state.items():
            if row is not None:
                known.put(key, True)

    history = batch.history
    for index, (message_id, old_ids) in sorted(batch.moves.items()):
        moved, versions = _move_references(conn, now, merges, message_id, old_ids)
        results[index] = replace(results[index], moved=tuple(moved))
        history.extend(versions)
    resource_rows.insert_history(conn, history)
    return results


class _Batch:
    """The in-memory state of one batch: rows as the database holds them, and as the jobs leave them."""

    def __init__(self, conn: Connection, now: datetime, merges: merge_rules.MergeMap):
        self.conn = conn
        self.now = now
        self.merges = merges
        self.generation = 0
        #: What the database row holds now (our provisional insert for claimed keys; None: no row).
        self.stored: dict[Key, StoredRow | None] = {}
        #: The row as the jobs applied so far leave it; None: the resource does not exist.
        self.state: dict[Key, StoredRow | None] = {}
        #: Keys whose row existed before this batch (they may have index rows to drop).
        self.existed: set[Key] = set()
        self.resources: dict[Key, dict[str, Any]] = {}
        self.reindex: set[Key] = set()
        #: New versions as history rows (``resource_rows.HISTORY_COLUMNS``); ``write_batch`` inserts them.
        self.history: list[tuple[Any, ...]] = []
        self.provenance: list[tuple[Any, ...]] = []
        self.merged: dict[str, tuple[str, str | None]] = {}
        self.unmerged: set[str] = set()
        #: Job index -> (message id, Patients it merged away): references to move after the flush.
        self.moves: dict[int, tuple[str | None, set[str]]] = {}
        self._prepared: dict[int, _Prepared] = {}
        #: id(resource) -> (resource, version, its stored JSON): the claim's and the write's are one.
        self._contents: dict[int, tuple[dict[str, Any], int, str]] = {}
        self._last_updated = format_instant(now)
        self._job_index = 0

    # -- reading ----------------------------------------------------------------------------------
    def first_row(self, change: Change, source: Source | None) -> StoredRow:
        """The row ``change`` makes when it finds nothing: what the claim inserts for a new key."""
        if change.method == "DELETE":
            return StoredRow(0, self.now, True, "", None, *_source_values(source))
        prepared = self.prepare(change)
        content = self.content(prepared.resource, 1)
        return StoredRow(1, self.now, False, prepared.digest, content, *_source_values(source))

    def lock(self, keys: list[Key], first_row: Callable[[Key], StoredRow], known: KnownRows | None = None) -> None:
        """Read the rows of ``keys``, after claiming them on PostgreSQL (``first_row`` of a missing key
        is what the claim inserts; a placeholder for a key ``known`` says is stored). Taking every
        row lock of a batch in (type, id) order keeps concurrent batches from deadlocking; on SQLite
        the caller's BEGIN IMMEDIATE already serializes writers, so missing rows are only inserted
        by ``flush``."""
        keys = sorted(keys)
        provisional: dict[Key, StoredRow] = {}
        if self.conn.dialect.name == "postgresql":
            placeholder = StoredRow(0, self.now, True, "", None)
            provisional = {key: placeholder if known and known.has(key) else first_row(key) for key in keys}
            inserted = resource_rows.claim(self.conn, list(provisional.items()))
            provisional = {key: provisional[key] for key in inserted}
        existing = resource_rows.read_rows(self.conn, [k for k in keys if k not in provisional])
        for key in keys:
            if key in provisional:
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

    def content(self, resource: dict[str, Any], version: int) -> str:
        """The stored JSON of ``resource`` as ``version`` (made once per resource and version)."""
        cached = self._contents.get(id(resource))
        if cached is not None and cached[0] is resource and cached[1] == version:
            return cached[2]
        content = stamp(resource, version, self._last_updated)
        self._contents[id(resource)] = (resource, version, content)
        return content

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
                self.state[change.key] = live.with_source(_source_values(source))
            return AppliedEntry(change.type, change.id, live.version_id, "unchanged")
        if state is not None and is_older(source, stored_source):
            return self._superseded(change, state, source)
        outcome: Outcome = "updated" if live is not None else "created"  # a PUT re-creates a deleted one
        entry = self._write(change, state, prepared.resource, prepared.digest, source, outcome)
        if change.type == "Patient":
            self._track_merge(change.id, prepared.resource, source)
        return entry

    def _delete_nothing(self, change: Change, state: StoredRow | None, source: Source | None) -> AppliedEntry:
        """A DELETE of what is not there. The tombstone keeps the newest source, so that an older
        message cannot create the resource afterwards."""
        if is_newer(source, stored_key(state) if state is not None else None):
            base = state or StoredRow(0, self.now, True, "", None)
            self.state[change.key] = base.with_source(_source_values(source))
        return AppliedEntry(change.type, change.id, state.version_id if state else 0, "unchanged")

    def _write(
        self,
        change: Change,
        state: StoredRow | None,
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
        content = self.content(resource, version) if resource is not None else None
        sources = _source_values(source) if not keep_source else _kept_source(state)
        self.state[key] = StoredRow(version, self.now, resource is None, digest, content, *sources)
        self.history.append((change.type, change.id, version, self.now, resource is None, content))
        self.reindex.add(key)
        if resource is not None:
            self.resources[key] = resource
        message = credit or (source.message_id if source else None)
        if message:
            self._record(message, change, version, outcome, None)
        return AppliedEntry(change.type, change.id, version, outcome)

    def _superseded(self, change: Change, state: StoredRow, source: Source | None) -> AppliedEntry:
        if source is not None:
            self._record(source.message_id, change, state.version_id, "superseded", state.source_message)
        return AppliedEntry(change.type, change.id, state.version_id, "superseded", state.source_message)

    def _record(self, message_id: str, change: Change, version: int, outcome: Outcome, by: str | None) -> None:
        self.provenance.append((message_id, change.type, change.id, version, outcome, by, self.now))

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
        """Write everything but the history rows (``self.history``, inserted by ``write_batch``)."""
        resource_rows.write_rows(self.conn, self.stored, self.state)
        drop_index_rows(self.conn, [key for key in self.reindex if key in self.existed])
        rows = IndexRows()
        for key in sorted(self.reindex):
            final = self.state[key]
            if final is not None and not final.deleted:
                rows.extend(rows_for_content(key[0], key[1], final.content_hash, self.resources[key]))
        insert_index_rows(self.conn, rows)
        provenance.record(self.conn, self.provenance)
        if self.merged or self.unmerged:
            merge_rules.save(self.conn, self.merged, self.unmerged)


def _move_references(
    conn: Connection, now: datetime, merges: merge_rules.MergeMap, message_id: str | None, old_ids: set[str]
) -> tuple[list[AppliedEntry], list[tuple[Any, ...]]]:
    """New versions of every resource referencing a Patient in ``old_ids``, pointing at its survivor,
    and their history rows (not inserted)."""
    keys = sorted({key for old in old_ids for key in merge_rules.referrers(conn, old)})
    if not keys:
        return [], []
    mover = _Batch(conn, now, merges)
    mover.lock(keys, lambda key: StoredRow(0, now, True, "", None))
    moved = []
    for key in keys:
        state = mover.state[key]
        if state is None or state.deleted or state.content is None:
            continue
        resource = fhirjson.loads(state.content)
        rewritten = merges.rewrite(key[0], resource, merge_rules.referenced_patients(canonical_json(resource)))
        if rewritten is None:
            continue
        digest = hashlib.sha256(canonical_json(rewritten)).hexdigest()
        change = Change(0, key[0], key[1], "PUT", rewritten, digest)
        moved.append(mover._write(change, state, rewritten, digest, None, "moved", keep_source=True, credit=message_id))
    mover.flush()
    return moved, mover.history


def _source_values(source: Source | None) -> tuple[Any, Any, Any, Any]:
    """(source_time, source_sender, source_seq, source_message) of a write from ``source``."""
    if source is None:
        return None, None, None, None
    return source.time, source.sender, source.seq, source.message_id


def _kept_source(state: StoredRow | None) -> tuple[Any, Any, Any, Any]:
    if state is None:
        return None, None, None, None
    return state.source_time, state.source_sender, state.source_seq, state.source_message
