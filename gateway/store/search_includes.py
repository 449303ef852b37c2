"""``_include`` and ``_revinclude``: resources a page of matches refers to, or that refer to it.

search.html#include (R4): ``_include=[type]:[param](:[target type])`` adds what the matches point at
through a reference parameter of the searched type; ``_revinclude=[type]:[param](:[target type])``
adds resources of ``type`` whose ``param`` points at a match. ``[param]`` may be ``*``: every
reference parameter of ``type`` (``_include=*`` alone: of the searched type; ``_revinclude=*`` alone:
of every type). With ``:iterate`` (``:recurse`` in STU3) an include applies to the resources included
as well, round after round, until no new resource comes or ``MAX_INCLUDED`` are reached. Both are
answered from the reference index, so only indexed reference parameters can be used.
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
from gateway.store.search_registry import SEARCH_PARAMETERS, can_refer_to, reference_parameters
from gateway.store.search_values import ForbiddenType, SearchError

#: At most this many included resources per page; more are left out with a warning.
MAX_INCLUDED = 1000
#: Rounds of ``:iterate`` after the first.
MAX_ROUNDS = 4
_CHUNK = 500

Key = tuple[str, str]


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam
    #: Only targets of these types (empty: any the parameter allows).
    target_types: tuple[str, ...]
    reverse: bool
    iterate: bool = False

    @property
    def value(self) -> str:
        """As written in a CapabilityStatement or a link: ``Observation:patient``."""
        return f"{self.source_type}:{self.param.name}"


def parse_include(
    types: tuple[str, ...], reverse: bool, raw: str, iterate: bool = False, hidden: frozenset[str] = frozenset()
) -> list[Include]:
    """Check one ``_include``/``_revinclude`` value of a search of ``types`` against the registry; raises
    SearchError (a ``hidden`` source type: ForbiddenType)."""
    kind = "_revinclude" if reverse else "_include"
    if raw == "*" and not reverse and len(types) == 1:
        raw = f"{types[0]}:*"
    if raw == "*" and reverse:  # every reference parameter of every type (that may see it)
        return [
            include
            for source_type in SEARCH_PARAMETERS
            if source_type not in hidden
            for include in parse_include(types, True, f"{source_type}:*", iterate, hidden)
        ]
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SearchError(f"{kind} value {raw!r} is not [type]:[parameter] or [type]:[parameter]:[target type]")
    source_type, name = parts[0], parts[1]
    if source_type in hidden:
        raise ForbiddenType(source_type)
    if name == "*":
        if source_type not in SEARCH_PARAMETERS:
            raise SearchError(f"{kind}={raw}: resource type {source_type!r} is not supported", "not-supported")
        params = reference_parameters(source_type)
    else:
        param = SEARCH_PARAMETERS.get(source_type, {}).get(name)
        if param is None or param.kind != "reference":
            raise SearchError(
                f"{kind}={raw}: {source_type} has no reference search parameter {name!r}", "not-supported"
            )
        params = [param]
    if not reverse and source_type not in types and not iterate:
        searched = ", ".join(types)
        raise SearchError(f"{kind}={raw}: a search of {searched} can only include through {searched} parameters")
    if reverse and not iterate and name != "*" and not any(can_refer_to(params[0], t) for t in types):
        raise SearchError(f"_revinclude={raw}: {source_type}.{name} never refers to {', '.join(types)}")
    if len(parts) == 3 and name == "*" and parts[2] not in SEARCH_PARAMETERS:
        raise SearchError(f"{kind}={raw}: resource type {parts[2]!r} is not supported", "not-supported")
    found = []
    for param in params:
        target_types = param.targets
        if len(parts) == 3:
            if not can_refer_to(param, parts[2]):
                if name == "*":
                    continue
                raise SearchError(f"{kind}={raw}: {source_type}.{name} never refers to {parts[2]}")
            target_types = (parts[2],)
        if reverse and name == "*" and not iterate and not any(can_refer_to(param, t) for t in types):
            continue
        found.append(Include(source_type, param, target_types, reverse, iterate))
    if not found and len(parts) == 3:
        raise SearchError(f"{kind}={raw}: {source_type}.* never refers to {parts[2]}")
    return found


def fetch_included(
    conn: Connection, matches: list[Key], includes: Iterable[Include]
) -> tuple[list[dict[str, Any]], bool]:
    """The resources ``includes`` add to a page of ``matches`` (type, id), each once, and whether some were cut off."""
    includes = list(includes)
    iterating = [include for include in includes if include.iterate]
    seen: set[Key] = set(matches)
    wanted: set[Key] = set()
    frontier, active = list(matches), includes
    for _ in range(1 + MAX_ROUNDS):
        found: set[Key] = set()
        for include in active:
            found |= (
                _revinclude_keys(conn, frontier, include) if include.reverse else _include_keys(conn, frontier, include)
            )
        new = found - seen
        seen |= new
        wanted |= new
        if not iterating or not new or len(wanted) > MAX_INCLUDED:
            break
        frontier, active = sorted(_existing(conn, sorted(new))), iterating
    ordered = sorted(wanted)
    return _contents(conn, ordered[:MAX_INCLUDED]), len(ordered) > MAX_INCLUDED


def _existing(conn: Connection, keys: list[Key]) -> set[Key]:
    """The ``keys`` of current, not deleted resources (an include may point at a resource not stored)."""
    table, found = fhir_resource, set[Key]()
    for resource_type in sorted({resource_type for resource_type, _ in keys}):
        ids = [resource_id for kind, resource_id in keys if kind == resource_type]
        for chunk in _chunks(ids):
            stmt = select(table.c.id).where(
                table.c.type == resource_type, table.c.id.in_(chunk), table.c.deleted == false()
            )
            found.update((resource_type, resource_id) for resource_id in conn.execute(stmt).scalars())
    return found


def _include_keys(conn: Connection, frontier: list[Key], include: Include) -> set[Key]:
    table = fhir_search_reference
    found: set[Key] = set()
    for chunk in _chunks(
        [resource_id for resource_type, resource_id in frontier if resource_type == include.source_type]
    ):
        stmt = select(table.c.target_type, table.c.target_id).where(
            table.c.type == include.source_type, table.c.param == include.param.index_name, table.c.id.in_(chunk)
        )
        if include.target_types:
            stmt = stmt.where(table.c.target_type.in_(include.target_types))
        found.update((row.target_type, row.target_id) for row in conn.execute(stmt))
    return found


def _revinclude_keys(conn: Connection, frontier: list[Key], include: Include) -> set[Key]:
    found: set[Key] = set()
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in frontier:
        if (
            resource_type in include.target_types
            if include.target_types
            else can_refer_to(include.param, resource_type)
        ):
            by_type.setdefault(resource_type, []).append(resource_id)
    for resource_type, ids in by_type.items():
        found |= _referrers(conn, resource_type, ids, include)
    return found


def _referrers(conn: Connection, resource_type: str, ids: list[str], include: Include) -> set[Key]:
    table = fhir_search_reference
    found: set[Key] = set()
    for chunk in _chunks(ids):
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
