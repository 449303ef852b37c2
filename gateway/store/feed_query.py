"""The parameters of a system or type history read as a feed (http.html#history), parsed and run.

``GET [base]/_history`` and ``GET [base]/[type]/_history?_sort=_lastUpdated`` read the history
feed (gateway/store/feed.py). Parameters:

* ``_sort``: ``_lastUpdated`` reads oldest first, in commit order (the feed: its pages always have
  a ``next`` link, where changes committed later will appear); ``-_lastUpdated``, R4's order and
  the default, reads newest first. (R4 fixes newest first and has no ``_sort`` on history; R5
  added exactly these two values, http.html#history in R5, so a client asking for the feed is
  understood by R5 servers too.) Either order follows feed positions, which can differ by a few
  milliseconds of lastUpdated from writes whose transactions overlapped.
* ``_cursor``: the position to continue after (oldest first) or before (newest first), from a
  ``next`` link; opaque to clients.
* ``_since``: only versions whose lastUpdated is at or after this instant, on every page.
* ``_type``: comma-separated resource types (system level only).
* ``_count``: changes per page (default 50, at most 1000).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from gateway.store.feed import FeedPage, read_changes, read_changes_newest_first
from gateway.store.history import parse_count, parse_since
from gateway.store.search_registry import SEARCH_PARAMETERS
from gateway.store.search_values import SearchError

SYSTEM_PARAMETERS = ("_count", "_since", "_type", "_sort", "_cursor")
TYPE_PARAMETERS = ("_count", "_since", "_sort", "_cursor")
#: ``_sort`` values: oldest first (the feed), newest first (R4's history order).
OLDEST_FIRST, NEWEST_FIRST = "_lastUpdated", "-_lastUpdated"


@dataclass(frozen=True)
class FeedQuery:
    #: None: every type (the caller may still exclude some).
    types: frozenset[str] | None
    since: datetime | None
    count: int
    cursor: str | None
    oldest_first: bool
    #: Parameter names dropped under lenient handling.
    ignored: tuple[str, ...] = ()


def asks_for_feed(params: dict[str, list[str]]) -> bool:
    """True when a type history asks for the feed's order (``_sort=_lastUpdated``)."""
    return params.get("_sort") == [OLDEST_FIRST]


def build_feed(params: dict[str, list[str]], resource_type: str | None = None, lenient: bool = False) -> FeedQuery:
    """Parse the parameters of a system history (``resource_type`` None) or of a type history read
    as a feed; unknown parameters raise SearchError unless ``lenient``."""
    supported = SYSTEM_PARAMETERS if resource_type is None else TYPE_PARAMETERS
    ignored = tuple(name for name in params if name not in supported)
    if ignored and not lenient:
        raise SearchError(
            f"unknown history parameter {ignored[0]!r} (supported: {', '.join(supported)})", "not-supported"
        )
    oldest_first = _order(params.get("_sort", [NEWEST_FIRST]))
    since = parse_since(params["_since"]) if "_since" in params else None
    cursor = None
    if "_cursor" in params:
        if len(params["_cursor"]) != 1:
            raise SearchError("_cursor must be given once")
        cursor = params["_cursor"][0]
    types = frozenset({resource_type}) if resource_type is not None else _types(params.get("_type"))
    return FeedQuery(types, since, parse_count(params), cursor, oldest_first, ignored)


def run_feed(conn: Connection, query: FeedQuery, exclude: Collection[str] = ()) -> tuple[FeedPage, str | None]:
    """One page and the cursor of the next one. Oldest first, the next cursor is always given (the
    last change shown, else the one asked with; None only before the first change); newest first,
    only when older changes remain."""
    if query.oldest_first:
        page = read_changes(conn, query.cursor, query.count, query.types, query.since, exclude=exclude)
        return page, page.next_position or query.cursor
    page = read_changes_newest_first(conn, query.cursor, query.count + 1, query.types, query.since, exclude=exclude)
    if len(page.changes) <= query.count:
        return page, None
    shown = page.changes[: query.count]
    return FeedPage(shown, shown[-1].position), shown[-1].position


def _order(values: list[str]) -> bool:
    if len(values) != 1 or values[0] not in (OLDEST_FIRST, NEWEST_FIRST):
        raise SearchError(f"_sort of a history is {OLDEST_FIRST} (oldest first) or {NEWEST_FIRST} (newest first)")
    return values[0] == OLDEST_FIRST


def _types(values: list[str] | None) -> frozenset[str] | None:
    if values is None:
        return None
    names = {name.strip() for value in values for name in value.split(",")}
    unknown = sorted(name for name in names if name not in SEARCH_PARAMETERS)
    if unknown:
        raise SearchError(f"_type: {unknown[0][:64]!r} is not a supported resource type")
    return frozenset(names)
