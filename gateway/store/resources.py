"""The built-in FHIR store: apply transaction Bundles idempotently, read resources, search them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import and_, false, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.errors import DeliveryError, TransientDeliveryError
from gateway.store.index import IndexRows, index_rows
from gateway.store.resource_tables import fhir_resource, fhir_resource_history
from gateway.store.search import build_search
from gateway.store.transaction import (
    AppliedEntry,
    ApplyResult,
    Outcome,
    content_hash,
    drop_index_rows,
    insert_index_rows,
    plan_changes,
    write_changes,
)

__all__ = [
    "AppliedEntry",
    "ApplyResult",
    "Outcome",
    "ResourceStore",
    "SearchResult",
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
class SearchResult:
    total: int
    resources: list[dict[str, Any]]
    count: int
    offset: int


class ResourceStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    def apply_bundle(self, bundle: dict[str, Any]) -> ApplyResult:
        """Apply a transaction Bundle of PUT/DELETE entries, all or nothing, in one database transaction.

        Raises DeliveryError for a bundle the store cannot apply, TransientDeliveryError when the
        database is busy or unreachable (retrying may succeed).
        """
        changes = plan_changes(bundle)
        if not changes:
            return ApplyResult(())
        try:
            with self._write() as conn:
                applied = write_changes(conn, changes, _now())
                conn.commit()
        except SQLAlchemyError as exc:
            raise _delivery_error(exc) from exc
        return ApplyResult(tuple(applied[change.position] for change in changes))

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
                    table.c.type == resource_type, table.c.id == resource_id
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

    def find(self, resource_type: str, params: dict[str, list[str]]) -> SearchResult:
        """Like ``search``, with the total number of matches and the page bounds."""
        query = build_search(resource_type, {k: [v] if isinstance(v, str) else list(v) for k, v in params.items()})
        with self.engine.connect() as conn:
            total = conn.execute(query.total()).scalar_one()
            contents = conn.execute(query.page()).scalars().all() if query.count and total > query.offset else []
        return SearchResult(total, [orjson.loads(content) for content in contents], query.count, query.offset)

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
                    rebuilt.extend(index_rows(row.type, row.id, orjson.loads(row.content)))
                insert_index_rows(conn, rebuilt)
                conn.commit()
            done += len(rows)
            after = (rows[-1].type, rows[-1].id)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if self._sqlite:
                # Take SQLite's write lock before reading, so two writers never both read a row and
                # then race to change it; a busy database waits for busy_timeout, then fails.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn


def _stored(resource_type: str, resource_id: str, row: Any) -> StoredResource:
    resource = orjson.loads(row.content) if row.content is not None else None
    return StoredResource(resource_type, resource_id, row.version_id, row.last_updated, row.deleted, resource)


def _now() -> datetime:
    moment = datetime.now(timezone.utc).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _delivery_error(exc: SQLAlchemyError) -> DeliveryError:
    """Busy, locked, deadlocked, serialization-failed or unreachable: retryable. Anything else: not."""
    reason = str(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc).strip().splitlines()[0][:300]
    connection_lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)) or connection_lost:
        return TransientDeliveryError(f"database busy or unavailable: {reason}")
    return DeliveryError(f"database rejected the bundle: {reason}")
