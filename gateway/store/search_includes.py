"""``_include`` and ``_revinclude``: resources a page of matches refers to, or that refer to it.

search.html#include (R4): ``_include=[type]:[param](:[target type])`` adds what the matches point at
through a reference parameter of the searched type; ``_revinclude=[type]:[param](:[target type])``
adds resources of ``type`` whose ``param`` points at a match. Both are answered from the reference
index, so only indexed reference parameters can be used (``:iterate`` and ``*`` are not supported).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import false, select
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import fhir_resource, fhir_search_reference
from gateway.store.search_params import SearchParam
from gateway.store.search_registry import SEARCH_PARAMETERS, can_refer_to
from gateway.store.search_values import SearchError

#: At most this many included resources per page; more are left out with a warning.
MAX_INCLUDED = 1000
_CHUNK = 500


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam
    #: Only targets of these types (empty: any the parameter allows).
    target_types: tuple[str, ...]
    reverse: bool

    @property
    def value(self) -> str:
        """As written in a CapabilityStatement or a link: ``Observation:patient``."""
        return f"{self.source_type}:{self.param.name}"


def parse_include(resource_type: str, reverse: bool, raw: str) -> Include:
    """Check one ``_include``/``_revinclude`` value against the registry; raises SearchError."""
    kind = "_revinclude" if reverse else "_include"
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SearchError(f"{kind} value {raw!r} is not [type]:[parameter] or [type]:[parameter]:[target type]")
    source_type, name = parts[0], parts[1]
    param = SEARCH_PARAMETERS.get(source_type, {}).get(name)
    if param is None or param.kind != "reference":
        raise SearchError(f"{kind}={raw}: {source_type} has no reference search parameter {name!r}", "not-supported")
    if not reverse and source_type != resource_type:
        raise SearchError(
            f"_include={raw}: a search of {resource_type} can only include through {resource_type} parameters"
        )
    if reverse and not can_refer_to(param, resource_type):
        raise SearchError(f"_revinclude={raw}: {source_type}.{name} never refers to {resource_type}")
    target_types = param.targets
    if len(parts) == 3:
        if not can_refer_to(param, parts[2]):
            raise SearchError(f"{kind}={raw}: {source_type}.{name} never refers to {parts[2]}")
        target_types = (parts[2],)
    return Include(source_type, param, target_types, reverse)


def fetch_included(
    conn: Connection, resource_type: str, match_ids: list[str], includes: Iterable[Include]
) -> tuple[list[dict[str, Any]], bool]:
    """The resources ``includes`` add to a page of matches, each once, and whether some were cut off."""
    wanted: set[tuple[str, str]] = set()
    for include in includes:
        wanted |= (
            _revinclude_keys(conn, resource_type, match_ids, include)
            if include.reverse
            else _include_keys(conn, match_ids, include)
        )
    wanted -= {(resource_type, resource_id) for resource_id in match_ids}
    keys = sorted(wanted)
    truncated = len(keys) > MAX_INCLUDED
    return _contents(conn, keys[:MAX_INCLUDED]), truncated


def _include_keys(conn: Connection, match_ids: list[str], include: Include) -> set[tuple[str, str]]:
    table = fhir_search_reference
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(match_ids):
        stmt = select(table.c.target_type, table.c.target_id).where(
            table.c.type == include.source_type, table.c.param == include.param.index_name, table.c.id.in_(chunk)
        )
        if include.target_types:
            stmt = stmt.where(table.c.target_type.in_(include.target_types))
        found.update((row.target_type, row.target_id) for row in conn.execute(stmt))
    return found


def _revinclude_keys(
    conn: Connection, resource_type: str, match_ids: list[str], include: Include
) -> set[tuple[str, str]]:
    if include.target_types and resource_type not in include.target_types:
        return set()
    table = fhir_search_reference
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(match_ids):
        stmt = (
            select(table.c.id)
            .where(
                table.c.type == include.source_type,
                table.c.param == include.param.index_name,
                table.c.target_type == resource_type,
                table.c.target_id.in_(chunk),
            )
            .distinct()
            .limit(MAX_INCLUDED + 1)
        )
        found.update((include.source_type, source_id) for source_id in conn.execute(stmt).scalars())
    return found


def _contents(conn: Connection, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Current, not deleted resources for ``keys`` (sorted by type and id); missing ones are skipped."""
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in keys:
        by_type.setdefault(resource_type, []).append(resource_id)
    table = fhir_resource
    found: dict[tuple[str, str], str] = {}
    for resource_type, ids in by_type.items():
        for chunk in _chunks(ids):
            stmt = select(table.c.id, table.c.content).where(
                table.c.type == resource_type, table.c.id.in_(chunk), table.c.deleted == false()
            )
            found.update(((resource_type, row.id), row.content) for row in conn.execute(stmt))
    return [fhirjson.loads(found[key]) for key in keys if key in found]


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
