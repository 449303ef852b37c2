"""Turn FHIR search parameters into one SQL query over the resource table and the search index, and run it.

Semantics follow FHIR R4 search.html: repeated parameters are ANDed, comma-separated values ORed
(value syntax in ``search_values``); result parameters ``_count``, ``_sort``, ``_include``,
``_revinclude``, ``_total``, ``_summary=count``; pages are keyset pages (``search_paging``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, exists, false, func, or_, select
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import SEARCH_TABLES, fhir_resource
from gateway.store.search_includes import Include, fetch_included, parse_include
from gateway.store.search_paging import Cursor, SortKey, after, decode_cursor, encode_cursor, order_by, parse_sort
from gateway.store.search_params import SearchParam
from gateway.store.search_registry import COMMON_PARAMETERS, SEARCH_PARAMETERS
from gateway.store.search_values import (
    SearchError,
    point_in_range,
    range_match,
    reference_match,
    split,
    string_match,
    token_match,
)

__all__ = ["SearchError", "SearchQuery", "SearchResult", "UnknownResourceType", "UnsupportedParameter", "build_search"]

DEFAULT_COUNT = 50
MAX_COUNT = 1000

#: Parameters that shape the result rather than select resources (search.html#return). ``_totalMethod``
#: is what fhirpy's ``count()`` sends (an Aidbox name); it is read like ``_total``.
RESULT_PARAMETERS = ("_count", "_sort", "_cursor", "_include", "_revinclude", "_total", "_totalMethod", "_summary")
_TOTAL_MODES = ("none", "estimate", "accurate", "count")
# Which kind of condition should pick the candidate rows; the rest are checked per candidate.
_SELECTIVITY = {"_id": 0, "reference": 1, "token": 2, "string": 3, "date": 4, "_lastUpdated": 5}


class UnknownResourceType(SearchError):
    def __init__(self, resource_type: str):
        super().__init__(f"resource type {resource_type!r} is not supported", code="not-supported")


class UnsupportedParameter(SearchError):
    """A parameter or modifier the server does not know; ignored under ``Prefer: handling=lenient``."""

    def __init__(self, message: str):
        super().__init__(message, code="not-supported")


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: the matching rows, their order, and the page asked for."""

    resource_type: str
    where: tuple[ColumnElement[bool], ...]
    count: int
    sort: tuple[SortKey, ...]
    cursor: Cursor | None
    includes: tuple[Include, ...]
    with_total: bool
    fingerprint: str
    #: Parameter names dropped under lenient handling, in request order.
    ignored: tuple[str, ...] = ()

    def page(self) -> Select[Any]:
        """One row more than the page, to tell whether another page follows."""
        forward = self.cursor.forward if self.cursor else True
        keys = [key.expression.label(f"sort_{n}") for n, key in enumerate(self.sort)]
        stmt = select(fhir_resource.c.content, *keys).where(*self.where)
        if self.cursor:
            stmt = stmt.where(after(self.sort, self.cursor))
        return stmt.order_by(*order_by(self.sort, forward)).limit(self.count + 1)

    def total(self) -> Select[Any]:
        return select(func.count()).select_from(fhir_resource).where(*self.where)


@dataclass(frozen=True)
class SearchResult:
    """One page of matches, in sort order, with what it included and the cursors of its neighbours."""

    resources: list[dict[str, Any]]
    total: int | None
    count: int
    included: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    previous_cursor: str | None = None
    warnings: list[str] = field(default_factory=list)
    ignored: tuple[str, ...] = ()


#: Values one parameter may list (OR), and parameters one search may combine (AND). Beyond these a
#: search is refused with a 400 rather than sent to the database as a statement it cannot plan
#: (SQLite refuses expressions deeper than 1000; PostgreSQL spends seconds planning 300 joins).
MAX_VALUES = 200
MAX_CONDITIONS = 100


def build_search(resource_type: str, params: dict[str, list[str]], lenient: bool = False) -> SearchQuery:
    """Parse ``params`` (name[:modifier] -> raw values) for ``resource_type``; raises SearchError.

    With ``lenient``, unknown parameters and unsupported modifiers are dropped (http.html#prefer).
    """
    if resource_type not in SEARCH_PARAMETERS:
        raise UnknownResourceType(resource_type)
    definitions = SEARCH_PARAMETERS[resource_type]
    result = {name: values for name, values in params.items() if name.partition(":")[0] in RESULT_PARAMETERS}
    conditions: list[tuple[int, _Condition]] = []
    used: list[tuple[str, list[str]]] = []
    ignored: list[str] = []
    for key, raw_values in params.items():
        if key in result:
            continue
        try:
            found = [_condition(resource_type, definitions, key, raw) for raw in raw_values if split(raw)]
        except UnsupportedParameter:
            if not lenient:
                raise
            ignored.append(key)
            continue
        conditions += [(_SELECTIVITY[condition.kind], condition) for condition in found]
        used.append((key, raw_values))
        if len(conditions) > MAX_CONDITIONS:
            raise SearchError(f"a search combines at most {MAX_CONDITIONS} parameters")
    includes = []
    for key, values in result.items():
        name, _, modifier = key.partition(":")
        if modifier:  # _include:iterate, _sort:..., none supported
            if not lenient:
                raise UnsupportedParameter(f"modifier :{modifier} is not supported on {name!r}")
            ignored.append(key)
            continue
        if name in ("_include", "_revinclude"):
            includes += [parse_include(resource_type, name == "_revinclude", value) for value in values if value]
    sort = parse_sort(result.get("_sort", []), definitions)
    fingerprint = _fingerprint(resource_type, used, result.get("_sort", []))
    count, with_total = _page_size(result)
    cursor = decode_cursor(_single("_cursor", result["_cursor"]), fingerprint, sort) if result.get("_cursor") else None
    where: list[ColumnElement[bool]] = [fhir_resource.c.type == resource_type, fhir_resource.c.deleted == false()]
    conditions.sort(key=lambda item: item[0])
    for position, (_, condition) in enumerate(conditions):
        where.append(condition.driving() if position == 0 else condition.correlated())
    return SearchQuery(
        resource_type, tuple(where), count, sort, cursor, tuple(includes), with_total, fingerprint, tuple(ignored)
    )


def run_search(conn: Connection, query: SearchQuery) -> SearchResult:
    """Fetch one page, its neighbours' cursors, the total when asked for, and the included resources."""
    if query.count == 0:
        total = conn.execute(query.total()).scalar_one() if query.with_total else None
        return SearchResult([], total, 0, ignored=query.ignored)
    rows = list(conn.execute(query.page()).all())
    more = len(rows) > query.count
    rows = rows[: query.count]
    forward = query.cursor.forward if query.cursor else True
    if not forward:
        rows.reverse()
    key_count = len(query.sort)

    def cursor_at(row: Any, towards_next: bool) -> str:
        return encode_cursor(query.fingerprint, towards_next, tuple(row[1 : 1 + key_count]))

    # Going forward, "more" means a next page; going back, a previous one. A page reached going
    # back always has the page it came from after it; one reached going forward from a cursor has
    # the page it came from before it.
    has_next = more if forward else True
    has_previous = query.cursor is not None if forward else more
    next_cursor = cursor_at(rows[-1], True) if rows and has_next else None
    previous_cursor = cursor_at(rows[0], False) if rows and has_previous else None
    total = None
    if query.with_total:
        whole = query.cursor is None and not more  # the first page holds every match
        total = len(rows) if whole else conn.execute(query.total()).scalar_one()
    resources = [fhirjson.loads(row.content) for row in rows]
    included, truncated = fetch_included(conn, query.resource_type, [r["id"] for r in resources], query.includes)
    warnings = ["more resources were included than one page may hold; some were left out"] if truncated else []
    return SearchResult(resources, total, query.count, included, next_cursor, previous_cursor, warnings, query.ignored)


@dataclass(frozen=True)
class _Condition:
    """One parameter occurrence: rows of an index table (or, without ``param``, the resource table) that match."""

    kind: str
    match: ColumnElement[bool]
    resource_type: str = ""
    param: str = ""

    def driving(self) -> ColumnElement[bool]:
        """As ``id IN (index lookup)``: the database starts from the index rows."""
        if not self.param:
            return self.match
        table = SEARCH_TABLES[self.kind]
        lookup = select(table.c.id).where(table.c.type == self.resource_type, table.c.param == self.param, self.match)
        return fhir_resource.c.id.in_(lookup)

    def correlated(self) -> ColumnElement[bool]:
        """As ``EXISTS (row for this candidate)``: checked per candidate through (type, id, param)."""
        if not self.param:
            return self.match
        table = SEARCH_TABLES[self.kind]
        return exists().where(
            table.c.type == fhir_resource.c.type,
            table.c.id == fhir_resource.c.id,
            table.c.param == self.param,
            self.match,
        )


def _condition(resource_type: str, definitions: dict[str, SearchParam], key: str, raw: str) -> _Condition:
    name, _, modifier = key.partition(":")
    values = split(raw)
    if len(values) > MAX_VALUES:
        raise SearchError(f"{name} lists {len(values)} values; one parameter takes at most {MAX_VALUES}")
    if name in COMMON_PARAMETERS:
        _no_modifier(name, modifier)
        if name == "_id":
            return _Condition("_id", fhir_resource.c.id.in_(values))
        return _Condition("_lastUpdated", _any(point_in_range(fhir_resource.c.last_updated, v) for v in values))
    param = definitions.get(name)
    if param is None:
        known = ", ".join(sorted([*definitions, *COMMON_PARAMETERS, *RESULT_PARAMETERS]))
        raise UnsupportedParameter(f"unknown search parameter {name!r} for {resource_type} (supported: {known})")
    table = SEARCH_TABLES[param.kind]
    if param.kind == "token":
        _no_modifier(name, modifier)
        match = _any(token_match(table, value) for value in values)
    elif param.kind == "string":
        if modifier not in ("", "exact", "contains"):
            raise UnsupportedParameter(f"modifier :{modifier} is not supported on string parameter {name!r}")
        match = _any(string_match(table, value, modifier) for value in values)
    elif param.kind == "date":
        _no_modifier(name, modifier)
        match = _any(range_match(table.c.low, table.c.high, value) for value in values)
    else:
        match = _any(reference_match(table, param, modifier, value) for value in values)
    return _Condition(param.kind, match, resource_type, param.index_name)


def _page_size(result: dict[str, list[str]]) -> tuple[int, bool]:
    """``_count`` (capped), and whether to count all matches (``_total``, ``_summary=count``)."""
    count = min(_integer("_count", result["_count"]), MAX_COUNT) if "_count" in result else DEFAULT_COUNT
    with_total = True
    for name in ("_total", "_totalMethod"):
        if name in result:
            mode = _single(name, result[name])
            if mode not in _TOTAL_MODES:
                raise SearchError(f"{name} must be one of none, estimate, accurate, got {mode!r}")
            with_total = mode != "none"
    if "_summary" in result:
        summary = _single("_summary", result["_summary"])
        if summary not in ("count", "false"):
            raise UnsupportedParameter(f"_summary={summary} is not supported (only count and false)")
        if summary == "count":  # search.html#summary: the total, no entries
            return 0, True
    return count, with_total


def _fingerprint(resource_type: str, used: list[tuple[str, list[str]]], sort: list[str]) -> str:
    """Identifies the filters and sort of a search, so a cursor cannot be replayed on another one."""
    canonical = orjson.dumps([resource_type, sorted(used), sort])
    return hashlib.sha256(canonical).hexdigest()[:16]


def _any(matches: Any) -> ColumnElement[bool]:
    return or_(*matches)


def _single(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise SearchError(f"{name} must be given once, got {values!r}")
    return values[0]


def _integer(name: str, values: list[str]) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise SearchError(f"{name} must be one non-negative integer, got {values!r}")
    return int(values[0])


def _no_modifier(name: str, modifier: str) -> None:
    if modifier:
        raise UnsupportedParameter(f"modifier :{modifier} is not supported on {name!r}")
