"""FHIR REST API over the built-in store: capabilities, read, vread, search (http.html)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.api.auth import require_role
from gateway.api.capability import capability_statement
from gateway.api.outcome import FHIRError, FHIRResponse
from gateway.config import Role
from gateway.store.fhir_dates import format_instant
from gateway.store.resources import ResourceStore, SearchResult, StoredResource
from gateway.store.search import SearchError
from gateway.store.search_params import SEARCH_PARAMETERS

router = APIRouter(prefix="/fhir", tags=["fhir"])

_reader = [Depends(require_role(Role.reader))]
# Parameters about the response format, not the search (http.html#parameters).
_FORMATS = {"json", "application/json", "application/fhir+json"}
_FORMAT_PARAMETERS = ("_format", "_pretty")


@router.get("/metadata", response_class=FHIRResponse)
def metadata(request: Request) -> FHIRResponse:
    """The CapabilityStatement (http.html#capabilities); needs no token."""
    return FHIRResponse(capability_statement(_base_url(request)))


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", dependencies=_reader, response_class=FHIRResponse)
def vread(resource_type: str, resource_id: str, version_id: int, request: Request) -> FHIRResponse:
    _check_type(resource_type)
    stored = _store(request).vread(resource_type, resource_id, version_id)
    if stored is None:
        raise FHIRError(404, f"{resource_type}/{resource_id} has no version {version_id}")
    if stored.deleted:
        raise FHIRError(410, f"version {version_id} of {resource_type}/{resource_id} is a deletion")
    return _resource_response(stored)


@router.get("/{resource_type}/{resource_id}", dependencies=_reader, response_class=FHIRResponse)
def read(resource_type: str, resource_id: str, request: Request) -> FHIRResponse:
    _check_type(resource_type)
    stored = _store(request).fetch(resource_type, resource_id)
    if stored is None:
        raise FHIRError(404, f"{resource_type}/{resource_id} is not known")
    if stored.deleted:  # http.html#read: a deleted resource answers 410 Gone
        raise FHIRError(410, f"{resource_type}/{resource_id} was deleted")
    return _resource_response(stored)


@router.get("/{resource_type}", dependencies=_reader, response_class=FHIRResponse)
def search(resource_type: str, request: Request) -> FHIRResponse:
    _check_type(resource_type)
    params: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        if name in _FORMAT_PARAMETERS:
            if name == "_format" and value.replace(" ", "+") not in _FORMATS:  # "+" may arrive as a space
                raise FHIRError(406, f"_format {value!r} is not supported; only JSON is", "not-supported")
            continue
        params.setdefault(name, []).append(value)
    try:
        result = _store(request).find(resource_type, params)
    except SearchError as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    return FHIRResponse(_searchset(request, resource_type, result))


def _searchset(request: Request, resource_type: str, result: SearchResult) -> dict[str, Any]:
    """A searchset Bundle with self, next and previous links (bundle.html#searchset, search.html#paging)."""
    links = [{"relation": "self", "url": str(request.url)}]
    if result.count and result.offset + result.count < result.total:
        links.append({"relation": "next", "url": _page_url(request, result.count, result.offset + result.count)})
    if result.offset and result.count:
        links.append(
            {"relation": "previous", "url": _page_url(request, result.count, max(0, result.offset - result.count))}
        )
    base = _base_url(request)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(datetime.now(timezone.utc).replace(tzinfo=None))},
        "type": "searchset",
        "total": result.total,
        "link": links,
        "entry": [
            {"fullUrl": f"{base}/{resource_type}/{resource['id']}", "resource": resource, "search": {"mode": "match"}}
            for resource in result.resources
        ],
    }


def _page_url(request: Request, count: int, offset: int) -> str:
    return str(request.url.include_query_params(_count=count, _offset=offset))


def _resource_response(stored: StoredResource) -> FHIRResponse:
    # ETag and Last-Modified carry the version (http.html#versioning).
    last_modified = format_datetime(stored.last_updated.replace(tzinfo=timezone.utc), usegmt=True)
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": last_modified}
    return FHIRResponse(stored.resource, headers=headers)


def _check_type(resource_type: str) -> None:
    if resource_type not in SEARCH_PARAMETERS:
        raise FHIRError(404, f"resource type {resource_type!r} is not supported", "not-supported")


def _store(request: Request) -> ResourceStore:
    store: ResourceStore = request.app.state.store
    return store


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + router.prefix
