"""A Subscription's ``criteria``: a search on one resource type, checked and matched by the store's
own search machinery (``search.build_search``), so a criteria means exactly what the same search
on ``GET /fhir/[type]?...`` means.

Matching runs on the version a change wrote, not on what the store holds by the time the
dispatcher looks: the changed resources are indexed (``index.index_rows``) into a private
in-memory SQLite database with the store's tables, and each criteria runs there as the SQL the
search would run, restricted to those rows. The store's database is not queried at all, and a
resource updated again meanwhile is matched as it was at each version.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import create_engine, delete, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from gateway.db.schema import SEARCH_TABLES, fhir_resource
from gateway.store.index import COLUMNS, index_rows
from gateway.store.search import RESULT_PARAMETERS, build_search
from gateway.store.search_registry import SEARCH_PARAMETERS
from gateway.store.search_values import SearchError

#: Types no Subscription may follow: the audit trail is for admins, never for an endpoint.
NOT_SUBSCRIBABLE = frozenset({"AuditEvent"})
MAX_CRITERIA = 2048


@dataclass(frozen=True, slots=True)
class Criteria:
    """A parsed criteria: the type and the search parameters (name -> values, as the API reads them)."""

    text: str
    resource_type: str
    params: tuple[tuple[str, tuple[str, ...]], ...]

    def as_query(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in self.params}

    @property
    def index_names(self) -> frozenset[str]:
        """The index rows a match needs (``_id`` and ``_lastUpdated`` need none)."""
        definitions = SEARCH_PARAMETERS[self.resource_type]
        names = (name.partition(":")[0] for name, _ in self.params)
        return frozenset(definitions[name].index_name for name in names if name in definitions)


def parse_criteria(text: str) -> Criteria:
    """Check ``Type?name=value&...`` (or ``Type``); raises SearchError saying what is wrong."""
    text = text.strip()
    if not text or len(text) > MAX_CRITERIA:
        raise SearchError(f"criteria must be 1-{MAX_CRITERIA} characters: [type]?[search parameters]")
    head, _, query = text.partition("?")
    resource_type = head.strip().strip("/")
    if "/" in resource_type or resource_type not in SEARCH_PARAMETERS:
        raise SearchError(
            f"criteria must start with a resource type the store supports, got {resource_type[:64]!r}",
            "not-supported",
        )
    if resource_type in NOT_SUBSCRIBABLE:
        raise SearchError(f"{resource_type} cannot be subscribed to", "forbidden")
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.partition(":")[0] in RESULT_PARAMETERS:
            raise SearchError(f"criteria selects resources; {name!r} shapes a result and is not allowed")
        if not value:
            raise SearchError(f"criteria parameter {name!r} has no value")
        params.setdefault(name, []).append(value)
    build_search(resource_type, params)  # raises SearchError / UnsupportedParameter
    return Criteria(text, resource_type, tuple((name, tuple(values)) for name, values in params.items()))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A version to match: its type, id, when it was written and its content."""

    resource_type: str
    resource_id: str
    last_updated: datetime
    resource: dict[str, Any]


class CriteriaMatcher:
    """Matches batches of resource versions against criteria in a private in-memory database.

    One instance per thread of use (the in-memory database is one connection)."""

    def __init__(self) -> None:
        self._engine: Engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        tables = [fhir_resource, *SEARCH_TABLES.values()]
        fhir_resource.metadata.create_all(self._engine, tables=tables)
        self._lock = threading.Lock()
        self._queries: dict[str, Any] = {}

    def close(self) -> None:
        self._engine.dispose()

    def match(self, candidates: list[Candidate], criteria: Iterable[Criteria]) -> dict[str, set[tuple[str, str]]]:
        """criteria text -> the (type, id) of the candidates it matches. A (type, id) appears once
        in ``candidates`` (the caller matches each page of versions in rounds)."""
        wanted = list(criteria)
        if not candidates or not wanted:
            return {c.text: set() for c in wanted}
        needed: dict[str, frozenset[str]] = {}
        for c in wanted:
            needed[c.resource_type] = needed.get(c.resource_type, frozenset()) | c.index_names
        with self._lock, self._engine.begin() as conn:
            try:
                self._load(conn, candidates, needed)
                return {c.text: self._run(conn, c) for c in wanted}
            finally:
                for table in (fhir_resource, *SEARCH_TABLES.values()):
                    conn.execute(delete(table))

    def _load(self, conn: Connection, candidates: list[Candidate], needed: dict[str, frozenset[str]]) -> None:
        """The candidates' rows, and their index rows of the parameters some criteria uses."""
        conn.execute(
            insert(fhir_resource),
            [
                {
                    "type": c.resource_type,
                    "id": c.resource_id,
                    "version_id": 1,
                    "last_updated": c.last_updated,
                    "deleted": False,
                    "content_hash": "",
                    "content": "",
                }
                for c in candidates
            ],
        )
        rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in SEARCH_TABLES}
        for c in candidates:
            only = needed.get(c.resource_type)
            if not only:  # no criteria on this type uses an indexed parameter
                continue
            found = index_rows(c.resource_type, c.resource_id, c.resource, only)
            rows["token"] += found.tokens
            rows["string"] += found.strings
            rows["date"] += found.dates
            rows["reference"] += found.references
        for kind, values in rows.items():
            if values:
                columns = COLUMNS[kind]
                conn.execute(insert(SEARCH_TABLES[kind]), [dict(zip(columns, value)) for value in values])

    def _run(self, conn: Connection, criteria: Criteria) -> set[tuple[str, str]]:
        stmt = self._queries.get(criteria.text)
        if stmt is None:
            query = build_search(criteria.resource_type, criteria.as_query())
            stmt = select(fhir_resource.c.type, fhir_resource.c.id).where(*query.where)
            if len(self._queries) < 1024:
                self._queries[criteria.text] = stmt
        return {(row.type, row.id) for row in conn.execute(stmt)}
