"""Searchset and history Bundles with their paging links (bundle.html, search.html#paging, http.html#history)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from gateway.api.outcome import operation_outcome
from gateway.store.fhir_dates import format_instant
from gateway.store.resources import StoredResource
from gateway.store.search import SearchResult


def base_url(request: Request) -> str:
    """The FHIR base: the server's address followed by /fhir."""
    return str(request.base_url).rstrip("/") + "/fhir"


def searchset(request: Request, result: SearchResult) -> dict[str, Any]:
    """A searchset Bundle: matches, then included resources, then warnings (bundle.html#searchset)."""
    base = base_url(request)
    entries = [_entry(base, resource, "match") for resource in result.resources]
    entries += [_entry(base, resource, "include") for resource in result.included]
    entries += [
        {"resource": operation_outcome(warning, "too-costly", "warning"), "search": {"mode": "outcome"}}
        for warning in result.warnings
    ]
    bundle = _bundle("searchset", _links(request, result.ignored, result.next_cursor, result.previous_cursor), entries)
    if result.total is not None:
        bundle["total"] = result.total
    return bundle


def history(
    request: Request,
    versions: Iterable[StoredResource],
    next_cursor: str | None,
    ignored: tuple[str, ...],
    *,
    always_next: bool = False,
) -> dict[str, Any]:
    """A history Bundle, in the order given (R4: newest first; the feed: oldest first), each version
    with its request and response (bundle.html#history). ``always_next``: the feed's pages always
    link to the next one (where later changes will appear), the page from the start without a
    cursor when there is none yet.

    Every write of the store is a PUT (update as create, http.html#upsert) or a DELETE, so request
    says so; response.status says what it did (201 created, 200 updated, 204 deleted)."""
    base = base_url(request)
    entries = []
    for version in versions:
        url = f"{version.type}/{version.id}"
        response = {
            "status": "204 No Content" if version.deleted else ("201 Created" if version.version_id == 1 else "200 OK"),
            "etag": f'W/"{version.version_id}"',
            "lastModified": format_instant(version.last_updated),
        }
        entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
        if version.resource is not None:
            entry["resource"] = version.resource
        entry["request"] = {"method": "DELETE" if version.deleted else "PUT", "url": url}
        entry["response"] = response
        entries.append(entry)
    return _bundle("history", _links(request, ignored, next_cursor, None, always_next), entries)


def _bundle(kind: str, links: list[dict[str, str]], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(datetime.now(UTC).replace(tzinfo=None))},
        "type": kind,
        "link": links,
        "entry": entries,
    }


def _entry(base: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _links(
    request: Request,
    ignored: tuple[str, ...],
    next_cursor: str | None,
    previous_cursor: str | None,
    always_next: bool = False,
) -> list[dict[str, str]]:
    """self (the parameters used, ignored ones left out), first, next and previous page links."""
    kept = [(name, value) for name, value in request.query_params.multi_items() if name not in ignored]
    unpaged = [(name, value) for name, value in kept if name != "_cursor"]

    def url(items: list[tuple[str, str]]) -> str:
        return str(request.url.replace(query=urlencode(items)))

    links = [{"relation": "self", "url": url(kept)}]
    if next_cursor or previous_cursor or len(unpaged) != len(kept):
        links.append({"relation": "first", "url": url(unpaged)})
    if next_cursor:
        links.append({"relation": "next", "url": url([*unpaged, ("_cursor", next_cursor)])})
    elif always_next:
        links.append({"relation": "next", "url": url(unpaged)})
    if previous_cursor:
        links.append({"relation": "previous", "url": url([*unpaged, ("_cursor", previous_cursor)])})
    return links
