"""The writer's statements on fhir_resource, its history and the search index, each built once.

Rows go in as tuples through bulk statements, and rows are read and deleted by lists of keys
(gateway/store/bulk.py): a constant number of statements per batch, whatever the types in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from gateway.db.bulk import BulkInsert, BulkUpdate, KeyedRows
from gateway.db.schema import SEARCH_TABLES, fhir_resource, fhir_resource_history
from gateway.store import feed_positions
from gateway.store.index import COLUMNS, IndexRows

Key = tuple[str, str]
_CONTENT_COLUMNS = ("version_id", "last_updated", "deleted", "content_hash", "content")
_SOURCE_COLUMNS = ("source_time", "source_sender", "source_seq", "source_message")
ROW_COLUMNS = _CONTENT_COLUMNS + _SOURCE_COLUMNS
#: fhir_resource_history rows as the write path makes them: (type, id, version_id, last_updated,
#: deleted, content); ``insert_history`` adds their feed positions.
HISTORY_COLUMNS = ("type", "id", "version_id", "last_updated", "deleted", "content")


@dataclass(frozen=True, slots=True)
class StoredRow:
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

    def values(self) -> tuple[Any, ...]:
        """The column values in ``ROW_COLUMNS`` order."""
        return (
            self.version_id,
            self.last_updated,
            self.deleted,
            self.content_hash,
            self.content,
            self.source_time,
            self.source_sender,
            self.source_seq,
            self.source_message,
        )

    def with_source(self, source: tuple[Any, Any, Any, Any]) -> StoredRow:
        """This row with other (source_time, source_sender, source_seq, source_message)."""
        return StoredRow(self.version_id, self.last_updated, self.deleted, self.content_hash, self.content, *source)

    def same_content(self, other: StoredRow) -> bool:
        """True when only the source columns differ."""
        return (
            self.version_id == other.version_id
            and self.last_updated == other.last_updated
            and self.deleted == other.deleted
            and self.content_hash == other.content_hash
            and (self.content is other.content or self.content == other.content)
        )


# Claim: a missing row is inserted; an existing one is left as it is, and locked on PostgreSQL
# (sql-insert.html, ON CONFLICT: "all rows will be locked when the DO UPDATE action is taken").
_CLAIM = BulkInsert(
    fhir_resource,
    ("type", "id", *ROW_COLUMNS),
    conflict="ON CONFLICT (type, id) DO UPDATE SET version_id = fhir_resource.version_id WHERE false",
    returning="type, id",
)
_INSERT = BulkInsert(fhir_resource, ("type", "id", *ROW_COLUMNS))
_UPDATE = BulkUpdate(fhir_resource, ROW_COLUMNS, ("type", "id"))
_UPDATE_SOURCE = BulkUpdate(fhir_resource, _SOURCE_COLUMNS, ("type", "id"))
_INSERT_HISTORY = BulkInsert(fhir_resource_history, (*HISTORY_COLUMNS, "feed_position"))
_INSERT_INDEX = {kind: BulkInsert(SEARCH_TABLES[kind], COLUMNS[kind]) for kind in COLUMNS}

_RESOURCES = KeyedRows(fhir_resource, ROW_COLUMNS)
_INDEX_ROWS = [KeyedRows(table) for table in SEARCH_TABLES.values()]


def claim(conn: Connection, rows: list[tuple[Key, StoredRow]]) -> set[Key]:
    """Insert the missing rows and lock the existing ones, in the order given; the keys inserted.

    PostgreSQL only: on SQLite the caller's BEGIN IMMEDIATE already serializes writers.
    """
    inserted = _CLAIM.run(conn, [(*key, *row.values()) for key, row in rows])
    return {(row[0], row[1]) for row in inserted}


def read_rows(conn: Connection, keys: Iterable[Key]) -> dict[Key, StoredRow]:
    """The stored rows of ``keys`` (keys without a row are left out)."""
    return {(row[0], row[1]): StoredRow(*row[2:]) for row in _RESOURCES.select(conn, sorted(set(keys)))}


def write_rows(conn: Connection, stored: dict[Key, StoredRow | None], final: dict[Key, StoredRow | None]) -> None:
    """Make fhir_resource hold ``final`` where it now holds ``stored`` (None: no row)."""
    inserts, updates, source_updates, dropped = [], [], [], []
    for key, row in final.items():
        before = stored[key]
        if row is None:
            if before is not None:
                dropped.append(key)
        elif before is None:
            inserts.append((*key, *row.values()))
        elif row != before:
            if row.same_content(before):
                source_updates.append((row.source_time, row.source_sender, row.source_seq, row.source_message, *key))
            else:
                updates.append((*row.values(), *key))
    _RESOURCES.delete(conn, sorted(dropped))
    _UPDATE.run(conn, updates)
    _UPDATE_SOURCE.run(conn, source_updates)
    _INSERT.run(conn, inserts)


def insert_history(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert versions, as tuples in ``HISTORY_COLUMNS`` order, with feed positions in list order.

    Taking positions locks the feed counter until commit (gateway/store/feed_positions.py): make
    this the last statement of a write on the store, once per transaction where possible.
    """
    if not rows:
        return
    first = feed_positions.take(conn, len(rows))
    _INSERT_HISTORY.run(conn, [(*row, first + offset) for offset, row in enumerate(rows)])


def drop_index_rows(conn: Connection, keys: Iterable[Key]) -> None:
    """Delete the search index rows of ``keys``."""
    ordered = sorted(set(keys))
    for table in _INDEX_ROWS:
        table.delete(conn, ordered)


def insert_index_rows(conn: Connection, rows: IndexRows) -> None:
    _INSERT_INDEX["token"].run(conn, rows.tokens)
    _INSERT_INDEX["string"].run(conn, rows.strings)
    _INSERT_INDEX["date"].run(conn, rows.dates)
    _INSERT_INDEX["reference"].run(conn, rows.references)
    _INSERT_INDEX["quantity"].run(conn, rows.quantities)
