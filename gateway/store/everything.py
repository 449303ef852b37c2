"""``Patient/[id]/$everything`` (R4 OperationDefinition Patient-everything): one Patient's record, in keyset pages.

A page's matches are the Patient and the resources of its Patient compartment (``compartments``:
those whose compartment parameters reference it, Patients linking to it through ``Patient.link``
among them), sorted by type and id; a page continues after the last (type, id) it showed, so a
resource written meanwhile never shifts the pages still to come (``search_paging``). Each page
includes, one hop out, what its matches reference that is in no Patient's compartment
(Practitioner, PractitionerRole, Organization, Location, Device, MessageHeader): a referenced
resource of a compartment type is either in this compartment already (a match on some page) or
another Patient's.

Parameters: ``_count``, ``_since`` (only resources whose meta.lastUpdated is at or after it, included
ones too), ``_type`` (comma-separated types, may repeat), ``_cursor`` (from a ``next`` link),
``_summary=count`` (the total, no entries; the API's subsetting does the other modes). A page costs
three queries whatever its size: the matches, the references they hold, the referenced resources.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, Subquery, and_, false, func, literal, or_, select, union
from sqlalchemy.engine import Connection

from gateway import fhirjson
from gateway.db.schema import fhir_resource, fhir_search_reference
from gateway.store.compartments import compartment_parameters, compartment_types
from gateway.store.history import parse_count, parse_since
from gateway.store.search_includes import MAX_INCLUDED
from gateway.store.search_paging import Cursor, SortKey, after, encode_cursor, forward_cursor, order_by
from gateway.store.search_registry import SEARCH_PARAMETERS, supported_types
from gateway.store.search_values import ForbiddenType, SearchError, UnsupportedParameter

EVERYTHING_PARAMETERS = ("_count", "_since", "_type", "_cursor", "_summary")
#: Types a page may include one hop out: stored types that are in no Patient's compartment.
REFERENCED_TYPES = tuple(t for t in supported_types() if t not in compartment_types())

_t = fhir_resource.c
_r = fhir_search_reference.c
_KEYS = (SortKey("_type", False, _t.type, "text"), SortKey("_id", False, _t.id, "text"))


@dataclass(frozen=True)
class EverythingQuery:
    patient_id: str
    #: The types to return, sorted (``_type``, or every type but the hidden ones).
    types: tuple[str, ...]
    since: datetime | None
    count: int
    cursor: Cursor | None
    fingerprint: str
    #: ``_summary=count``: the number of matches, no entries.
    count_only: bool = False
    #: Parameter names dropped under lenient handling, in request order.
    ignored: tuple[str, ...] = ()

    def members(self) -> Subquery:
        """(type, id) of the Patient and of the resources in its compartment, of the types asked for."""
        branches: list[Any] = []  # the SELECTs of (type, id) to unite
        if "Patient" in self.types:
            patient = literal(self.patient_id, String()).label("id")
            branches.append(select(literal("Patient", String()).label("type"), patient))
        linked = [
            and_(_r.type == resource_type, _r.param.in_(compartment_parameters(resource_type)))
            for resource_type in self.types
            if compartment_parameters(resource_type)
        ]
        if linked:
            branches.append(
                select(_r.type, _r.id).where(or_(*linked), _r.target_type == "Patient", _r.target_id == self.patient_id)
            )
        if not branches:
            return (
                select(literal("", String()).label("type"), literal("", String()).label("id")).where(false()).subquery()
            )
        return union(*branches).subquery() if len(branches) > 1 else branches[0].subquery()

    def _matching(self, *columns: Any) -> Select[Any]:
        members = self.members()
        type_column, id_column = members.c.type, members.c.id
        joined = fhir_resource.join(members, and_(_t.type == type_column, _t.id == id_column))
        stmt = select(*columns).select_from(joined).where(_t.deleted == false(), _t.version_id > 0)
        return stmt.where(_t.last_updated >= self.since) if self.since is not None else stmt

    def page(self) -> Select[Any]:
        """One row more than the page, to tell whether another page follows."""
        stmt = self._matching(_t.type, _t.id, _t.content)
        if self.cursor is not None:
            stmt = stmt.where(after(_KEYS, self.cursor))
        return stmt.order_by(*order_by(_KEYS, True)).limit(self.count + 1)

    def total(self) -> Select[Any]:
        return self._matching(func.count())


@dataclass(frozen=True)
class EverythingPage:
    #: The Patient and the compartment resources of this page, by type and id.
    resources: list[dict[str, Any]]
    #: What they reference outside every Patient compartment, by type and id.
    included: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    #: With ``_summary=count`` only.
    total: int | None = None
    warnings: list[str] = field(default_factory=list)
    #: Parameter names dropped under lenient handling, in request order.
    ignored: tuple[str, ...] = ()


def build_everything(
    patient_id: str, params: dict[str, list[str]], lenient: bool = False, hidden: frozenset[str] = frozenset()
) -> EverythingQuery:
    """Parse the operation's parameters; unknown ones raise UnsupportedParameter unless ``lenient``,
    a type in ``hidden`` named by ``_type`` raises ForbiddenType (other types leave ``hidden`` out)."""
    ignored = tuple(name for name in params if name not in EVERYTHING_PARAMETERS)
    if ignored and not lenient:
        supported = ", ".join(EVERYTHING_PARAMETERS)
        raise UnsupportedParameter(f"$everything does not support {ignored[0][:64]!r} (supported: {supported})")
    types = _types(params.get("_type", []), hidden)
    since = parse_since(params["_since"]) if "_since" in params else None
    identity = ["$everything", patient_id, types, since.isoformat() if since else None]
    fingerprint, cursor = forward_cursor(params, identity, _KEYS, "$everything")
    count = parse_count(params)
    return EverythingQuery(
        patient_id, types, since, count, cursor, fingerprint, params.get("_summary") == ["count"], ignored
    )


def run_everything(conn: Connection, query: EverythingQuery) -> EverythingPage:
    """One page: its matches, what they reference one hop out, and the cursor of the next page."""
    if query.count_only:
        return EverythingPage([], total=conn.execute(query.total()).scalar_one(), ignored=query.ignored)
    rows = conn.execute(query.page()).all()
    following = None
    if len(rows) > query.count:
        rows = rows[: query.count]
        following = encode_cursor(query.fingerprint, True, (rows[-1].type, rows[-1].id))
    resources = [fhirjson.loads(row.content) for row in rows]
    wanted = [t for t in REFERENCED_TYPES if t in query.types]
    targets = sorted(_referenced(conn, [(row.type, row.id) for row in rows], wanted)) if wanted else []
    warnings = []
    if len(targets) > MAX_INCLUDED:
        targets = targets[:MAX_INCLUDED]
        warnings.append("more resources were referenced than one page may include; some were left out")
    included = _contents(conn, targets, query.since)
    return EverythingPage(resources, included, following, None, warnings, query.ignored)


def _types(raw: list[str], hidden: frozenset[str]) -> tuple[str, ...]:
    named = {name.strip() for value in raw for name in value.split(",") if name.strip()}
    for resource_type in sorted(named):
        if resource_type not in SEARCH_PARAMETERS:
            raise SearchError(f"_type: resource type {resource_type[:64]!r} is not supported", "not-supported")
        if resource_type in hidden:
            raise ForbiddenType(resource_type)
    if raw and not named:
        raise SearchError("_type names no resource type")
    return tuple(sorted(named)) if named else tuple(t for t in supported_types() if t not in hidden)


def _by_type(keys: Iterable[tuple[str, str]], type_column: Any, id_column: Any) -> ColumnElement[bool]:
    """``type = T AND id IN (...)`` for each type, ORed (each served by an index on (type, id))."""
    ids: dict[str, list[str]] = {}
    for resource_type, resource_id in keys:
        ids.setdefault(resource_type, []).append(resource_id)
    return or_(*(and_(type_column == kind, id_column.in_(chosen)) for kind, chosen in sorted(ids.items())))


def _referenced(conn: Connection, keys: list[tuple[str, str]], target_types: list[str]) -> set[tuple[str, str]]:
    """(type, id) of the resources of ``target_types`` that the resources ``keys`` reference (indexed references)."""
    if not keys:
        return set()
    holders = _by_type(keys, _r.type, _r.id)
    stmt = select(_r.target_type, _r.target_id).where(holders, _r.target_type.in_(target_types)).distinct()
    return {(row.target_type, row.target_id) for row in conn.execute(stmt)}


def _contents(conn: Connection, keys: list[tuple[str, str]], since: datetime | None) -> list[dict[str, Any]]:
    """The current, not deleted resources of ``keys`` (changed at or after ``since``), by type and id."""
    if not keys:
        return []
    stmt = select(_t.type, _t.id, _t.content).where(
        _by_type(keys, _t.type, _t.id), _t.deleted == false(), _t.version_id > 0
    )
    if since is not None:
        stmt = stmt.where(_t.last_updated >= since)
    rows = conn.execute(stmt.order_by(_t.type, _t.id)).all()
    return [fhirjson.loads(row.content) for row in rows]
