"""The history of one resource or of a whole type, newest first, in keyset pages (http.html#history).

Parameters (R4 http.html#history): ``_count``, ``_since`` (versions written at or after an
instant), ``_cursor`` (from a ``next`` link). Versions are ordered by (lastUpdated, id, versionId)
descending; a page continues below the last key it showed, so versions written meanwhile sort
above it and never shift the pages still to come.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.engine import Connection

from gateway.db.schema import fhir_resource_history
from gateway.store.fhir_dates import InvalidDate, date_range
from gateway.store.search_paging import Cursor, SortKey, after, encode_cursor, forward_cursor, order_by
from gateway.store.search_values import SearchError

DEFAULT_COUNT = 50
MAX_COUNT = 1000
HISTORY_PARAMETERS = ("_count", "_since", "_cursor")

_table = fhir_resource_history
_KEYS = (
    SortKey("_lastUpdated", True, _table.c.last_updated, "datetime"),
    SortKey("_id", True, _table.c.id, "text"),
    SortKey("_version", True, _table.c.version_id, "integer"),
)


@dataclass(frozen=True)
class HistoryQuery:
    resource_type: str
    resource_id: str | None
    since: datetime | None
    count: int
    cursor: Cursor | None
    fingerprint: str
    #: Parameter names dropped under lenient handling.
    ignored: tuple[str, ...] = ()

    def page(self) -> Select[Any]:
        where: list[ColumnElement[bool]] = [_table.c.type == self.resource_type]
        if self.resource_id is not None:
            where.append(_table.c.id == self.resource_id)
        if self.since is not None:
            where.append(_table.c.last_updated >= self.since)
        if self.cursor is not None:
            where.append(after(_KEYS, self.cursor))
        columns = (_table.c.type, _table.c.id, _table.c.version_id, _table.c.last_updated, _table.c.deleted)
        stmt = select(*columns, _table.c.content).where(*where)
        return stmt.order_by(*order_by(_KEYS, True)).limit(self.count + 1)


def build_history(
    resource_type: str, resource_id: str | None, params: dict[str, list[str]], lenient: bool = False
) -> HistoryQuery:
    """Parse history parameters; unknown ones raise SearchError unless ``lenient``."""
    ignored = tuple(name for name in params if name not in HISTORY_PARAMETERS)
    if ignored and not lenient:
        raise SearchError(
            f"unknown history parameter {ignored[0]!r} (supported: {', '.join(HISTORY_PARAMETERS)})", "not-supported"
        )
    count = parse_count(params)
    since = parse_since(params["_since"]) if "_since" in params else None
    identity = [resource_type, resource_id, since.isoformat() if since else None]
    fingerprint, cursor = forward_cursor(params, identity, _KEYS, "history")
    return HistoryQuery(resource_type, resource_id, since, count, cursor, fingerprint, ignored)


def run_history(conn: Connection, query: HistoryQuery) -> tuple[list[Any], str | None]:
    """The versions of one page, newest first, and the cursor of the next page (None on the last)."""
    rows = conn.execute(query.page()).all()
    if len(rows) <= query.count:
        return list(rows), None
    last = rows[query.count - 1]
    following = encode_cursor(query.fingerprint, True, (last.last_updated, last.id, last.version_id))
    return list(rows[: query.count]), following


def parse_count(params: dict[str, list[str]]) -> int:
    """The page size of ``_count`` (DEFAULT_COUNT without it, at most MAX_COUNT)."""
    if "_count" not in params:
        return DEFAULT_COUNT
    values = params["_count"]
    if len(values) != 1 or not values[0].isascii() or not values[0].isdigit() or not values[0].strip("0"):
        raise SearchError(f"_count must be one positive integer, got {[v[:32] for v in values]!r}")
    return min(int(values[0][-12:]) if len(values[0].lstrip("0")) <= 12 else MAX_COUNT, MAX_COUNT)


def parse_since(values: list[str]) -> datetime:
    """The instant of ``_since`` (naive UTC): versions written at or after it."""
    if len(values) != 1:
        raise SearchError("_since must be given once")
    try:
        return date_range(values[0].replace(" ", "+"))[0]  # an unencoded "+" arrives as a space
    except InvalidDate as exc:
        raise SearchError(f"_since: {exc}") from None
