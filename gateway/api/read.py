"""Read and vread answers: ETag, Last-Modified, and conditional reads (http.html#read, http.html#cread).

``If-None-Match`` with the current version's ETag, or ``If-Modified-Since`` not older than the
version, answers 304 Not Modified (RFC 9110 13.1.2 and 13.1.3; If-None-Match wins when both are sent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from fastapi import Request
from fastapi.responses import Response

from gateway.api.negotiation import respond
from gateway.api.outcome import FHIRError
from gateway.api.subsetting import Subset
from gateway.store.resources import StoredResource


def resource_response(request: Request, stored: StoredResource | None, what: str, subset: Subset) -> Response:
    """200 with the resource (``subset`` of it), 304 when the client's copy is current, 404 unknown, 410 deleted."""
    if stored is None:
        raise FHIRError(404, f"{what} is not known")
    if stored.deleted:  # http.html#read: a deleted resource answers 410 Gone
        raise FHIRError(410, f"{what} was deleted")
    headers = validators(stored)
    if not_modified(request, stored):
        return Response(status_code=304, headers=headers)
    resource = stored.resource if subset.whole or stored.resource is None else subset.apply(stored.resource)
    return respond(request, resource, headers=headers)


def validators(stored: StoredResource) -> dict[str, str]:
    """ETag and Last-Modified of a version (http.html#versioning: the weak ETag holds the versionId)."""
    last_modified = format_datetime(stored.last_updated.replace(tzinfo=UTC), usegmt=True)
    return {"ETag": f'W/"{stored.version_id}"', "Last-Modified": last_modified}


def not_modified(request: Request, stored: StoredResource) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, stored.version_id)
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is not None:
        since = _http_date(if_modified_since)
        # HTTP dates have whole seconds: the version counts as unmodified within the second stated.
        return since is not None and stored.last_updated.replace(microsecond=0) <= since
    return False


def _etag_matches(header: str, version_id: int) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2); a bare version number, as fhirpy's refresh() sends, counts too."""
    for tag in (part.strip() for part in header.split(",")):
        if tag == "*":
            return True
        opaque = tag[2:] if tag.startswith("W/") else tag
        if opaque.strip('"') == str(version_id):
            return True
    return False


def _http_date(value: str) -> datetime | None:
    """A naive-UTC datetime, or None for a date that cannot be parsed (then the header is ignored)."""
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
