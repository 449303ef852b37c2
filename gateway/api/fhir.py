"""FHIR REST API over the built-in store (http.html): capabilities, read, vread, history, search (of a
type, and across types: ``GET [base]?_type=``; GET, and POST [type]/_search with a form body),
``_summary``/``_elements`` on read and search.

Routes are thin: the store answers, ``read``/``bundles`` shape the answer, ``subsetting`` trims it,
``negotiation`` picks the format. Order matters: ``_history`` must be tried before ``[type]``,
``[type]/_history`` before ``[type]/[id]``. Every route needs the reader role; the types in
``ADMIN_ONLY_TYPES`` (the audit trail) need admin, and are left out of what a search of another type,
or the history of all types, holds for anyone else; a chain or ``_has`` through them needs admin too.
Every answer that returns resources is handed to the access audit trail (``access_audit.record_access``)
before it is sent. HEAD works on every GET route (``head``). A JWT's SMART scopes narrow what a reader
may read and search (``scoped_access``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gateway import fhirjson
from gateway.api import bundles, scoped_access
from gateway.api.access_audit import record_access
from gateway.api.auth import ADMIN_ONLY_TYPES, Principal, check_role, require_role
from gateway.api.capability import capability_statement
from gateway.api.negotiation import FORMAT_PARAMETERS, is_lenient, negotiate, respond
from gateway.api.outcome import FHIRError, FHIRResponse
from gateway.api.read import resource_response
from gateway.api.smart_configuration import security_extension
from gateway.api.smart_scopes import Permission
from gateway.api.subsetting import Subset, requested_subset
from gateway.config import Role
from gateway.store.access_events import Interaction
from gateway.store.feed_query import NEWEST_FIRST, asks_for_feed, build_feed
from gateway.store.resources import ResourceStore, StoredResource
from gateway.store.search import ForbiddenType, SearchError, SearchResult
from gateway.store.search_registry import SEARCH_PARAMETERS

router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(negotiate)])

_reader = Depends(require_role(Role.reader))

#: datatypes.html#id: a resource id is 1-64 of letters, digits, "-" and ".".
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Version ids are positive integers stored in 64 bits.
_MAX_VERSION = 2**63 - 1
#: POST [type]/_search takes its parameters as a form (http.html#search); a body this big is refused.
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 1 << 20


@router.get("/metadata", response_class=FHIRResponse)
def metadata(request: Request) -> Response:
    """The CapabilityStatement (http.html#capabilities); needs no token."""
    smart = security_extension(request.app.state.authorization_server)
    return respond(request, capability_statement(bundles.base_url(request), smart))


@router.get("/_history", response_class=FHIRResponse)
def system_history(request: Request, principal: Principal = _reader) -> Response:
    """history-system: every version of every resource, newest first, or with ``_sort=_lastUpdated``
    the history feed: oldest first in commit order (gateway/store/feed_query.py). Other roles than
    admin never see the admin-only types: they are left out in the query, so pages stay full."""
    scoped_access.require_unlimited(principal, "the history of all types")
    return _feed(request, principal, None)


@router.get("", response_class=FHIRResponse)
def search_system(request: Request, principal: Principal = _reader) -> Response:
    """search-system (search.html#searchsystem): ``_type=A,B`` and the parameters every type has."""
    query = _query(request)
    named = [name for value in query.pop("_type", []) for name in value.split(",") if name]
    types = sorted(set(named)) if named else None
    if types is None:
        scoped_access.require_unlimited(principal, "a search across all types")
    for resource_type in types or ():
        if resource_type not in SEARCH_PARAMETERS:
            raise FHIRError(400, f"_type: resource type {resource_type[:64]!r} is not supported", "not-supported")
        if resource_type in ADMIN_ONLY_TYPES:
            check_role(principal, Role.admin)
        scoped_access.require_everywhere(principal, resource_type, Permission.search, "a search across types")
    result = _run(principal, lambda hidden: _store(request).find_across(types, query, is_lenient(request), hidden))
    response = respond(request, bundles.searchset(request, result))
    if result.resources or result.included:
        record_access(request, principal, Interaction.search_system, response)
    return response


@router.get("/{resource_type}/_history", response_class=FHIRResponse)
def type_history(resource_type: str, request: Request, principal: Principal = _reader) -> Response:
    """history-type: every version of every resource of a type, newest first; with
    ``_sort=_lastUpdated`` the type's part of the history feed, oldest first in commit order."""
    _check_type(resource_type, principal)
    scoped_access.require_everywhere(principal, resource_type, Permission.read, "the history of a type")
    if asks_for_feed(_query(request)):
        return _feed(request, principal, resource_type)
    return _history(request, principal, resource_type, None)


@router.get("/{resource_type}/{resource_id}/_history", response_class=FHIRResponse)
def instance_history(
    resource_type: str, resource_id: str, request: Request, principal: Principal = _reader
) -> Response:
    """history-instance: every version of one resource, deletions included, newest first."""
    _check_type(resource_type, principal)
    patient = scoped_access.reach(principal, resource_type, Permission.read)
    _check_id(resource_id)
    current = _store(request).fetch(resource_type, resource_id)
    if current is None or not scoped_access.shows(current, patient):
        raise FHIRError(404, f"{resource_type}/{resource_id} is not known")
    return _history(request, principal, resource_type, resource_id, patient)


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", response_class=FHIRResponse)
def vread(
    resource_type: str, resource_id: str, version_id: str, request: Request, principal: Principal = _reader
) -> Response:
    _check_type(resource_type, principal)
    patient = scoped_access.reach(principal, resource_type, Permission.read)
    _check_id(resource_id)
    if not version_id.isascii() or not version_id.isdigit():
        raise FHIRError(400, f"version id {version_id[:32]!r} is not a positive integer")
    version = int(version_id)
    if not 1 <= version <= _MAX_VERSION:
        raise FHIRError(404, f"{resource_type}/{resource_id} version {version_id[:32]} is not known")
    subset = requested_subset(resource_type, _query(request))
    stored = _store(request).vread(resource_type, resource_id, version)
    if not scoped_access.shows(stored, patient):
        stored = None  # outside the token's compartment: as if unknown
    if stored is not None and stored.deleted:
        raise FHIRError(410, f"version {version_id} of {resource_type}/{resource_id} is a deletion")
    response = resource_response(request, stored, f"{resource_type}/{resource_id} version {version_id}", subset)
    _record_read(
        request,
        principal,
        Interaction.vread,
        stored,
        response,
        f"{resource_type}/{resource_id}/_history/{version}",
        subset,
    )
    return response


@router.get("/{resource_type}/{resource_id}", response_class=FHIRResponse)
def read(resource_type: str, resource_id: str, request: Request, principal: Principal = _reader) -> Response:
    _check_type(resource_type, principal)
    patient = scoped_access.reach(principal, resource_type, Permission.read)
    _check_id(resource_id)
    subset = requested_subset(resource_type, _query(request))
    stored = _store(request).fetch(resource_type, resource_id)
    if not scoped_access.shows(stored, patient):
        stored = None  # outside the token's compartment: as if unknown
    response = resource_response(request, stored, f"{resource_type}/{resource_id}", subset)
    _record_read(request, principal, Interaction.read, stored, response, f"{resource_type}/{resource_id}", subset)
    return response


@router.get("/{resource_type}", response_class=FHIRResponse)
def search(resource_type: str, request: Request, principal: Principal = _reader) -> Response:
    """search-type (search.html); errors are 400 OperationOutcomes, unknown parameters too unless lenient."""
    _check_type(resource_type, principal)
    patient = scoped_access.reach(principal, resource_type, Permission.search)
    return _search(request, principal, resource_type, request.query_params.multi_items(), False, patient)


@router.post("/{resource_type}/_search", response_class=FHIRResponse)
async def search_by_post(resource_type: str, request: Request, principal: Principal = _reader) -> Response:
    """search-type by POST (http.html#search): the form body's parameters and the URL's together, the
    same answer as GET; names and birth dates stay out of URLs and server logs. Paging links are GET URLs."""
    _check_type(resource_type, principal)
    patient = scoped_access.reach(principal, resource_type, Permission.search)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != _FORM:
        raise FHIRError(415, f"POST {resource_type}/_search takes a {_FORM} body, not {media_type[:64]!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise FHIRError(413, f"a search form is at most {_MAX_FORM_BYTES} bytes", "too-costly")
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise FHIRError(400, "the search form is not UTF-8") from None
    params = [*request.query_params.multi_items(), *form]
    return await run_in_threadpool(_search, request, principal, resource_type, params, True, patient)


def _search(
    request: Request,
    principal: Principal,
    resource_type: str,
    params: list[tuple[str, str]],
    posted: bool,
    patient: str | None,
) -> Response:
    """A search of one type; with ``patient``, of that Patient's compartment only (SMART ``patient/`` scopes)."""
    query = _parameters(params)
    subset = requested_subset(resource_type, query)
    for name in ("_revinclude", "_include"):
        if any(value.partition(":")[0] in ADMIN_ONLY_TYPES for value in query.get(name, [])):
            check_role(principal, Role.admin)
    result = _run(
        principal,
        lambda hidden: _store(request).find(resource_type, _store_query(query), is_lenient(request), hidden, patient),
    )
    whole = result
    if not subset.whole:
        result = dataclasses.replace(
            result,
            resources=[subset.apply(resource) for resource in result.resources],
            included=[subset.apply(resource) for resource in result.included],
        )
    response = respond(request, bundles.searchset(request, result, params))
    if result.resources or result.included:
        searched = urlencode(params) if posted else None
        answer = None if subset.whole else fhirjson.dumps(bundles.searchset(request, whole, params))
        record_access(request, principal, Interaction.search_type, response, parameters=searched, answer=answer)
    return response


def _feed(request: Request, principal: Principal, resource_type: str | None) -> Response:
    try:
        query = build_feed(_query(request), resource_type, lenient=is_lenient(request))
        if query.types is not None and query.types & ADMIN_ONLY_TYPES:
            check_role(principal, Role.admin)
        exclude = () if principal.role is Role.admin else ADMIN_ONLY_TYPES
        page, next_cursor = _store(request).feed(query, exclude)
    except SearchError as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    versions = [
        StoredResource(c.resource_type, c.resource_id, c.version_id, c.last_updated, c.deleted, c.resource)
        for c in page.changes
    ]
    bundle = bundles.history(request, versions, next_cursor, query.ignored, always_next=query.oldest_first)
    response = respond(request, bundle)
    if any(version.resource is not None for version in versions):
        interaction = Interaction.history_system if resource_type is None else Interaction.history_type
        record_access(request, principal, interaction, response)
    return response


def _run(principal: Principal, find: Callable[[frozenset[str]], SearchResult]) -> SearchResult:
    """Run a search with the admin-only types hidden from lower roles (and the types a token's scopes
    do not allow reading); its errors as OperationOutcomes."""
    admin = principal.role is Role.admin
    unreadable = scoped_access.unreadable_types(principal)
    try:
        result = find((frozenset() if admin else frozenset(ADMIN_ONLY_TYPES)) | unreadable)
    except ForbiddenType:
        if unreadable:
            raise scoped_access.refused_type() from None
        check_role(principal, Role.admin)
        raise
    except SearchError as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    if not admin:
        # A reference parameter that may point anywhere (Provenance.target) could include an admin-only type.
        visible = [resource for resource in result.included if resource.get("resourceType") not in ADMIN_ONLY_TYPES]
        result = dataclasses.replace(result, included=visible)
    if principal.access is not None:  # an include may reach types, or patients, the token's scopes do not
        visible = [resource for resource in result.included if scoped_access.visible(principal, resource)]
        result = dataclasses.replace(result, included=visible)
    return result


def _history(
    request: Request, principal: Principal, resource_type: str, resource_id: str | None, patient: str | None = None
) -> Response:
    """History of a type or an instance; with ``patient``, the versions outside its compartment are left
    out (a deletion, which holds no resource, stays)."""
    params = _query(request)
    if resource_id is None and params.get("_sort") == [NEWEST_FIRST]:
        del params["_sort"]  # the order type history has anyway
    try:
        page = _store(request).history(resource_type, resource_id, params, lenient=is_lenient(request))
    except SearchError as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    versions = [v for v in page.versions if v.resource is None or scoped_access.shows(v, patient)]
    response = respond(request, bundles.history(request, versions, page.next_cursor, page.ignored))
    if not any(version.resource is not None for version in versions):
        return response
    if resource_id is None:
        record_access(request, principal, Interaction.history_type, response)
    else:
        record_access(request, principal, Interaction.history_instance, response, f"{resource_type}/{resource_id}")
    return response


def _record_read(
    request: Request,
    principal: Principal,
    interaction: Interaction,
    stored: StoredResource | None,
    response: Response,
    what: str,
    subset: Subset,
) -> None:
    """Audit a read that returned the resource (a 304 returns nothing: the client's copy is current).
    A subset is audited from the whole resource, so the Patient it is about is found even when
    ``_elements`` left its subject out."""
    if response.status_code == 200 and stored is not None and stored.resource is not None:
        answer = None if subset.whole else fhirjson.dumps(stored.resource)
        record_access(request, principal, interaction, response, what, answer=answer)


def _query(request: Request) -> dict[str, list[str]]:
    """Query parameters by name, without the ones about the response format."""
    return _parameters(request.query_params.multi_items())


def _parameters(items: Any) -> dict[str, list[str]]:
    """Parameters by name, without the ones about the response format."""
    params: dict[str, list[str]] = {}
    for name, value in items:
        if name not in FORMAT_PARAMETERS:
            params.setdefault(name, []).append(value)
    return params


def _store_query(query: dict[str, list[str]]) -> dict[str, list[str]]:
    """What the store searches with: ``_summary`` only as ``count`` (the rest is the API's subsetting)."""
    kept = {name: values for name, values in query.items() if name not in ("_summary", "_elements")}
    if query.get("_summary") == ["count"]:
        kept["_summary"] = ["count"]
    return kept


def _check_type(resource_type: str, principal: Principal) -> None:
    if resource_type in ADMIN_ONLY_TYPES:
        check_role(principal, Role.admin)
    elif resource_type not in SEARCH_PARAMETERS:
        raise FHIRError(404, f"resource type {resource_type!r} is not supported", "not-supported")


def _check_id(resource_id: str) -> None:
    if resource_id.startswith("$"):  # a type-level operation this server does not have (Patient/$everything)
        raise FHIRError(400, f"the operation {resource_id[:64]} is not supported here", "not-supported")
    if not _ID.fullmatch(resource_id):
        raise FHIRError(400, "a resource id is 1-64 letters, digits, '-' and '.' (datatypes.html#id)")


def _store(request: Request) -> ResourceStore:
    store: ResourceStore = request.app.state.store
    return store
