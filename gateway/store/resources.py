"""The built-in FHIR store: apply transaction Bundles idempotently, read resources, search them."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway import fhirjson
from gateway.db.schema import fhir_resource, fhir_resource_history
from gateway.errors import DeliveryError, GatewayError, as_unavailable, describe
from gateway.store.everything import EverythingPage, build_everything, run_everything
from gateway.store.feed import FeedPage
from gateway.store.feed_query import FeedQuery, run_feed
from gateway.store.history import build_history, run_history
from gateway.store.index import IndexRows, index_rows
from gateway.store.ordering import Source, is_older, stored_key
from gateway.store.resource_rows import drop_index_rows, insert_index_rows
from gateway.store.search import SearchResult, build_search, build_system_search, run_search
from gateway.store.transaction import AppliedEntry, ApplyResult, Outcome, content_hash, plan_changes
from gateway.store.writer import Job, KnownRows, write_batch

__all__ = [
    "AppliedEntry",
    "ApplyResult",
    "HistoryPage",
    "Job",
    "Outcome",
    "ResourceStore",
    "SearchResult",
    "Source",
    "StoredResource",
    "content_hash",
]


@dataclass(frozen=True, slots=True)
class StoredResource:
    type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    #: The resource with meta.versionId/lastUpdated; None for a deleted version.
    resource: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    #: Newest first.
    versions: list[StoredResource]
    next_cursor: str | None
    #: Parameter names dropped under lenient handling.
    ignored: tuple[str, ...]


class ResourceStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        #: Keys this store's writes saw stored: a hint for PostgreSQL claims (gateway/store/writer.py).
        self.known: KnownRows | None = KnownRows()

    def apply_bundle(self, bundle: dict[str, Any], source: Source | None = None) -> ApplyResult:
        """Apply a transaction Bundle of PUT/DELETE entries, all or nothing, in one database transaction.

        ``source`` is the message the bundle was converted from: with it, an entry older than the
        stored data is skipped as superseded (gateway/store/ordering.py). Raises DeliveryError for a
        bundle the store cannot apply, StoreUnavailable when the database is busy or
        unreachable (retrying may succeed).
        """
        job = Job(plan_changes(bundle), source)
        if not job.changes:
            return ApplyResult(())
        try:
            with self.transaction() as conn:
                (result,) = self.write(conn, [job])
                conn.commit()
        except SQLAlchemyError as exc:
            raise delivery_error(exc) from exc
        return result

    def write(self, conn: Connection, jobs: list[Job]) -> list[ApplyResult]:
        """Apply ``jobs`` in ``conn``'s open write transaction (see ``transaction``); the caller commits."""
        return write_batch(conn, jobs, _now(), self.known)

    def superseding(self, keys: list[tuple[str, str]], source: Source) -> set[tuple[str, str]]:
        """The keys whose stored data comes from a message newer than ``source``."""
        table, newer = fhir_resource, set[tuple[str, str]]()
        columns = (table.c.type, table.c.id, table.c.source_time, table.c.source_sender, table.c.source_seq)
        with self.engine.connect() as conn:
            for resource_type in sorted({t for t, _ in keys}):
                ids = sorted({i for t, i in keys if t == resource_type})
                stmt = select(*columns).where(table.c.type == resource_type, table.c.id.in_(ids))
                newer.update((row.type, row.id) for row in conn.execute(stmt) if is_older(source, stored_key(row)))
        return newer

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current resource, or None when it does not exist or is deleted."""
        stored = self.fetch(resource_type, resource_id)
        return stored.resource if stored and not stored.deleted else None

    def fetch(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """The current version, deleted or not, or None when the resource never existed."""
        table = fhir_resource
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table.c.version_id, table.c.last_updated, table.c.deleted, table.c.content).where(
                    table.c.type == resource_type, table.c.id == resource_id, table.c.version_id > 0
                )
            ).one_or_none()
        return _stored(resource_type, resource_id, row) if row else None

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource | None:
        table = fhir_resource_history
        with self.engine.connect() as conn:
            row = conn.execute(
                select(table.c.version_id, table.c.last_updated, table.c.deleted, table.c.content).where(
                    table.c.type == resource_type, table.c.id == resource_id, table.c.version_id == version_id
                )
            ).one_or_none()
        return _stored(resource_type, resource_id, row) if row else None

    def search(self, resource_type: str, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Resources of ``resource_type`` matching FHIR search ``params``; raises search.SearchError."""
        return self.find(resource_type, params).resources

    def find(
        self,
        resource_type: str,
        params: dict[str, list[str]],
        lenient: bool = False,
        hidden: frozenset[str] = frozenset(),
        compartment: str | None = None,
    ) -> SearchResult:
        """Like ``search``: one page with the total, included resources and cursors of the next/previous page.
        A chain, ``_has`` or include through a type in ``hidden`` raises search.ForbiddenType; with
        ``compartment`` (a Patient's id) only resources in its compartment match (included ones are not checked)."""
        query = build_search(resource_type, _lists(params), lenient, hidden, compartment)
        with self.engine.connect() as conn:
            return run_search(conn, query)

    def find_across(
        self,
        types: list[str] | None,
        params: dict[str, list[str]],
        lenient: bool = False,
        hidden: frozenset[str] = frozenset(),
    ) -> SearchResult:
        """A search across ``types`` (None: every type not ``hidden``), ``GET [base]?_type=``."""
        query = build_system_search(types, _lists(params), lenient, hidden)
        with self.engine.connect() as conn:
            return run_search(conn, query)

    def everything(
        self, patient_id: str, params: dict[str, list[str]], lenient: bool = False, hidden: frozenset[str] = frozenset()
    ) -> EverythingPage:
        """A page of ``Patient/[id]/$everything`` (gateway/store/everything.py) without the types in ``hidden``
        (naming one in ``_type`` raises search.ForbiddenType); raises SearchError."""
        query = build_everything(patient_id, _lists(params), lenient, hidden)
        with self.engine.connect() as conn:
            return run_everything(conn, query)

    def history(
        self, resource_type: str, resource_id: str | None, params: dict[str, list[str]], lenient: bool = False
    ) -> HistoryPage:
        """Versions of one resource (or, without ``resource_id``, of a type), newest first; raises SearchError."""
        query = build_history(resource_type, resource_id, params, lenient)
        with self.engine.connect() as conn:
            rows, next_cursor = run_history(conn, query)
        return HistoryPage([_stored(row.type, row.id, row) for row in rows], next_cursor, query.ignored)

    def feed(self, query: FeedQuery, exclude: Collection[str] = ()) -> tuple[FeedPage, str | None]:
        """A page of the history feed (gateway/store/feed_query.py) without the types in ``exclude``,
        and the cursor of the next page."""
        with self.engine.connect() as conn:
            return run_feed(conn, query, exclude)

    def reindex(self, resource_type: str | None = None, batch: int = 500) -> int:
        """Rebuild the search index rows (after search parameters changed); returns resources indexed."""
        table, done, after = fhir_resource, 0, ("", "")
        while True:
            stmt = select(table.c.type, table.c.id, table.c.content).where(
                table.c.deleted == false(),
                or_(table.c.type > after[0], and_(table.c.type == after[0], table.c.id > after[1])),
            )
            if resource_type:
                stmt = stmt.where(table.c.type == resource_type)
            stmt = stmt.order_by(table.c.type, table.c.id).limit(batch)
            with self._write() as conn:
                # Lock the batch (PostgreSQL) so a concurrent update cannot slip between read and rewrite.
                rows = conn.execute(stmt if self._sqlite else stmt.with_for_update()).all()
                if not rows:
                    return done
                drop_index_rows(conn, [(row.type, row.id) for row in rows])
                rebuilt = IndexRows()
                for row in rows:
                    rebuilt.extend(index_rows(row.type, row.id, fhirjson.loads(row.content)))
                insert_index_rows(conn, rebuilt)
                conn.commit()
            done += len(rows)
            after = (rows[-1].type, rows[-1].id)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a write transaction (the caller commits; leaving without commit rolls back)."""
        with self._write() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self._sqlite:
                # Take SQLite's write lock before reading, so two writers never both read a row and
                # then race to change it; a busy database waits for busy_timeout, then fails.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn


def _lists(params: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: [v] if isinstance(v, str) else list(v) for k, v in params.items()}


def _stored(resource_type: str, resource_id: str, row: Any) -> StoredResource:
    resource = fhirjson.loads(row.content) if row.content is not None else None
    return StoredResource(resource_type, resource_id, row.version_id, row.last_updated, row.deleted, resource)


def _now() -> datetime:
    moment = datetime.now(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def delivery_error(exc: SQLAlchemyError) -> GatewayError:
    """Busy, locked, deadlocked, unreachable, out of disk: StoreUnavailable (an outage, waited out).
    Anything else the database refused: a DeliveryError. Neither quotes a value."""
    outage = as_unavailable(exc, "storing")
    if outage is not None:
        return outage
    return DeliveryError(f"database rejected the bundle: {describe(exc)}")
