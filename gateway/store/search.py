"""Turn FHIR search parameters into one SQL query over the resource table and the search index, and run it.

Semantics follow FHIR R4 search.html: repeated parameters are ANDed, comma-separated values ORed
(each occurrence, with its modifiers, chains and ``_has``, in ``search_conditions``; value syntax in
``search_values``); result parameters ``_count``, ``_sort``, ``_include``, ``_revinclude`` (with
``*`` and ``:iterate``, ``search_includes``), ``_total``, ``_summary=count``; pages are keyset pages
(``search_paging``). ``build_system_search`` is ``GET [base]?_type=``: the parameters every type has.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, false, func, select
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import fhir_resource
from gateway.store.compartments import compartment_condition
from gateway.store.search_conditions import MAX_VALUES, Condition, numbered_aliases, parse_condition
from gateway.store.search_includes import Include, fetch_included, parse_include
from gateway.store.search_paging import Cursor, SortKey, after, decode_cursor, encode_cursor, order_by, parse_sort
from gateway.store.search_registry import COMMON_PARAMETERS, SEARCH_PARAMETERS, SYSTEM_PARAMETERS
from gateway.store.search_values import ForbiddenType, SearchError, UnsupportedParameter, split

__all__ = [
    "MAX_VALUES",
    "ForbiddenType",
    "SearchError",
    "SearchQuery",
    "SearchResult",
    "UnknownResourceType",
    "UnsupportedParameter",
    "build_search",
    "build_system_search",
]

DEFAULT_COUNT = 50
MAX_COUNT = 1000

#: Parameters that shape the result rather than select resources (search.html#return). ``_totalMethod``
#: is what fhirpy's ``count()`` sends (an Aidbox name); it is read like ``_total``.
RESULT_PARAMETERS = ("_count", "_sort", "_cursor", "_include", "_revinclude", "_total", "_totalMethod", "_summary")
_TOTAL_MODES = ("none", "estimate", "accurate", "count")
#: Modifiers of the result parameters: ``:iterate`` on the includes, and its STU3 name ``:recurse`` (fhirpy
#: sends ``:recursive``).
_RESULT_MODIFIERS = {
    "_include": ("iterate", "recurse", "recursive"),
    "_revinclude": ("iterate", "recurse", "recursive"),
}


class UnknownResourceType(SearchError):
    def __init__(self, resource_type: str):
        super().__init__(f"resource type {resource_type!r} is not supported", code="not-supported")


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: the matching rows, their order, and the page asked for."""

    #: The type searched; "" for a search across ``types`` (``GET [base]?_type=``).
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
    types: tuple[str, ...] = ()

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


#: Parameters one search may combine (AND). Beyond this a search is refused with a 400 rather than
#: sent to the database as a statement it cannot plan (SQLite refuses expressions deeper than 1000;
#: PostgreSQL spends seconds planning 300 joins). One parameter lists at most MAX_VALUES values.
MAX_CONDITIONS = 100


def build_search(
    resource_type: str,
    params: dict[str, list[str]],
    lenient: bool = False,
    hidden: frozenset[str] = frozenset(),
    compartment: str | None = None,
) -> SearchQuery:
    """Parse ``params`` (name[:modifier] -> raw values) for ``resource_type``; raises SearchError.

    With ``lenient``, unknown parameters and unsupported modifiers are dropped (http.html#prefer).
    A chain, ``_has`` or include through a type in ``hidden`` raises ForbiddenType. With ``compartment``
    (a Patient's id), only resources in that Patient's compartment match (``compartments``).
    """
    if resource_type not in SEARCH_PARAMETERS:
        raise UnknownResourceType(resource_type)
    with numbered_aliases():
        query = _build((resource_type,), params, lenient, hidden, system=False)
    if compartment is None:
        return query
    return dataclasses.replace(query, where=(*query.where, compartment_condition(resource_type, compartment)))


def build_system_search(
    types: list[str] | None, params: dict[str, list[str]], lenient: bool = False, hidden: frozenset[str] = frozenset()
) -> SearchQuery:
    """``GET [base]?_type=A,B&...`` (search.html#searchsystem): the parameters every type has, over ``types``
    (None: every type not ``hidden``); sorted by ``_sort`` (``_id``, ``_lastUpdated``), then type and id."""
    if types is None:
        types = [name for name in SEARCH_PARAMETERS if name not in hidden]
    for resource_type in types:
        if resource_type not in SEARCH_PARAMETERS:
            raise UnknownResourceType(resource_type)
        if resource_type in hidden:
            raise ForbiddenType(resource_type)
    if not types:
        raise SearchError("_type names no resource type")
    with numbered_aliases():
        return _build(tuple(sorted(set(types))), params, lenient, hidden, system=True)


def _build(
    types: tuple[str, ...], params: dict[str, list[str]], lenient: bool, hidden: frozenset[str], system: bool
) -> SearchQuery:
    resource_type = "" if system else types[0]
    result = {name: values for name, values in params.items() if name.partition(":")[0] in RESULT_PARAMETERS}
    conditions: list[Condition] = []
    used: list[tuple[str, list[str]]] = []
    ignored: list[str] = []
    for key, raw_values in params.items():
        if key in result:
            continue
        try:
            if system:
                _check_system_parameter(key)
            found = [parse_condition(resource_type or types[0], key, raw, hidden) for raw in raw_values if split(raw)]
        except UnsupportedParameter:
            if not lenient:
                raise
            ignored.append(key)
            continue
        conditions += found
        used.append((key, raw_values))
        if len(conditions) > MAX_CONDITIONS:
            raise SearchError(f"a search combines at most {MAX_CONDITIONS} parameters")
    includes: list[Include] = []
    for key, values in result.items():
        name, _, modifier = key.partition(":")
        if modifier and modifier not in _RESULT_MODIFIERS.get(name, ()):
            if not lenient:
                raise UnsupportedParameter(f"modifier :{modifier} is not supported on {name!r}")
            ignored.append(key)
            continue
        if name in ("_include", "_revinclude"):
            for value in values:
                if value:
                    includes += parse_include(types, name == "_revinclude", value, bool(modifier), hidden)
    definitions = {} if system else SEARCH_PARAMETERS[resource_type]
    sort = parse_sort(result.get("_sort", []), definitions, by_type=system)
    fingerprint = _fingerprint(",".join(types), used, result.get("_sort", []))
    count, with_total = _page_size(result)
    cursor = decode_cursor(_single("_cursor", result["_cursor"]), fingerprint, sort) if result.get("_cursor") else None
    type_filter = fhir_resource.c.type.in_(types) if system else fhir_resource.c.type == resource_type
    where: list[ColumnElement[bool]] = [type_filter, fhir_resource.c.deleted == false()]
    conditions.sort(key=lambda condition: condition.rank)
    for position, condition in enumerate(conditions):
        # Index lookups by id hold for one type only; a search across types checks every row.
        where.append(condition.driving() if position == 0 and not system else condition.correlated())
    return SearchQuery(
        resource_type,
        tuple(where),
        count,
        sort,
        cursor,
        tuple(includes),
        with_total,
        fingerprint,
        tuple(ignored),
        types,
    )


def _check_system_parameter(key: str) -> None:
    name = key.partition(":")[0]
    if name not in COMMON_PARAMETERS and name not in SYSTEM_PARAMETERS:
        known = ", ".join(sorted([*COMMON_PARAMETERS, *SYSTEM_PARAMETERS, "_type", *RESULT_PARAMETERS]))
        raise UnsupportedParameter(f"a search across types takes only {known}; {name!r} is not one of them")


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
    matches = [(resource["resourceType"], resource["id"]) for resource in resources]
    included, truncated = fetch_included(conn, matches, query.includes)
    warnings = ["more resources were included than one page may hold; some were left out"] if truncated else []
    return SearchResult(resources, total, query.count, included, next_cursor, previous_cursor, warnings, query.ignored)


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


def _single(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise SearchError(f"{name} must be given once, got {values!r}")
    return values[0]


def _integer(name: str, values: list[str]) -> int:
    if len(values) != 1 or not values[0].isdigit():
        raise SearchError(f"{name} must be one non-negative integer, got {values!r}")
    return int(values[0])
