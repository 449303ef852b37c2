"""The history feed: every change of the store, oldest first, in commit order, resumable.

Each history row carries a feed position (gateway/store/feed_positions.py): unique, and a
transaction's rows are numbered above every row of the transactions committed before it. So a
reader that asks for the changes after the last position it saw gets every change committed
since, exactly once and in order, whatever writers run meanwhile: deletes (a tombstone: a version
without content) and merges (the merged Patient's version, then the re-pointed versions of what
referenced it, in one commit) included.

Positions are global: a filter (``types``, ``exclude``, ``since``) only skips rows, so a reader
may resume with another filter from the same position. Tokens are the position as 19 decimal
digits, so tokens compare as strings in feed order too.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import fhir_resource_history
from gateway.store.search_values import SearchError

_table = fhir_resource_history
_DIGITS = 19  # a BigInteger's largest value, 2**63 - 1, has 19
_COLUMNS = (
    _table.c.feed_position,
    _table.c.type,
    _table.c.id,
    _table.c.version_id,
    _table.c.last_updated,
    _table.c.deleted,
    _table.c.content,
)


@dataclass(frozen=True)
class Change:
    position: str  # opaque, totally ordered token of this change in commit order
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime  # naive UTC, as the store keeps it
    deleted: bool
    resource: dict[str, Any] | None  # the version's content; None for a delete (tombstone)


@dataclass(frozen=True)
class FeedPage:
    changes: list[Change]
    next_position: str | None  # resume after this (the last change's position); None when empty


def encode_position(position: int) -> str:
    """The token of a feed position: fixed width, so tokens sort as positions do."""
    return str(position).zfill(_DIGITS)


def decode_position(token: str) -> int:
    """The feed position of a token; SearchError when it is not one."""
    if not (0 < len(token) <= _DIGITS and token.isascii() and token.isdigit()) or int(token) >= 2**63:
        raise SearchError("not a history feed position (use the one in a next link)")
    return int(token)


def read_changes(
    conn: Connection,
    after: str | None,
    count: int,
    types: Collection[str] | None = None,
    since: datetime | None = None,
    *,
    exclude: Collection[str] = (),
) -> FeedPage:
    """Changes committed after ``after`` (from the start when None), oldest first, at most ``count``.

    ``types``: only these resource types (None: all); ``exclude``: never these (the API leaves the
    admin-only types out for other roles here, so pages are full); ``since``: only versions whose
    lastUpdated is at or after it (naive UTC).
    """
    return _read(conn, after, count, types, since, exclude, newest_first=False)


def read_changes_newest_first(
    conn: Connection,
    before: str | None,
    count: int,
    types: Collection[str] | None = None,
    since: datetime | None = None,
    *,
    exclude: Collection[str] = (),
) -> FeedPage:
    """Like ``read_changes``, the other way: changes before ``before`` (from the newest when None),
    newest first (R4 history order, http.html#history); ``next_position`` is the oldest shown."""
    return _read(conn, before, count, types, since, exclude, newest_first=True)


def _read(
    conn: Connection,
    start: str | None,
    count: int,
    types: Collection[str] | None,
    since: datetime | None,
    exclude: Collection[str],
    *,
    newest_first: bool,
) -> FeedPage:
    if count < 1:
        raise SearchError("a feed page holds at least one change")
    position = _table.c.feed_position
    stmt = select(*_COLUMNS)
    if start is not None:
        stmt = stmt.where(position < decode_position(start) if newest_first else position > decode_position(start))
    if types is not None:
        stmt = stmt.where(_table.c.type.in_(sorted(set(types))))
    if exclude:
        stmt = stmt.where(_table.c.type.not_in(sorted(set(exclude))))
    if since is not None:
        stmt = stmt.where(_table.c.last_updated >= since)
    rows = conn.execute(stmt.order_by(position.desc() if newest_first else position).limit(count)).all()
    changes = [_change(row) for row in rows]
    return FeedPage(changes, changes[-1].position if changes else None)


def _change(row: Any) -> Change:
    resource = fhirjson.loads(row.content) if row.content is not None else None
    return Change(
        encode_position(row.feed_position),
        row.type,
        row.id,
        row.version_id,
        row.last_updated,
        bool(row.deleted),
        resource,
    )
