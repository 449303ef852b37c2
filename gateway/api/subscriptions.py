"""``/fhir/Subscription``: create, read, search, replace and delete R4 Subscriptions (http.html).

Operators and admins only, for reading too: a Subscription's ``channel.header`` may hold the
endpoint's credentials, and its endpoint receives patient data. Subscriptions are not patient
data, so these reads are not in the access audit trail; who created, changed or deleted one is
recorded as an operator action (an admin-only AuditEvent and a log line naming the token).
Included before the generic FHIR routes, which would answer 404 for the type (it is not in the
store). The status is the gateway's (docs/consumers.md, "Subscriptions").
"""

from __future__ import annotations

import uuid
from datetime import UTC
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway import fhirjson
from gateway.api import bundles
from gateway.api.auth import Principal, require_role
from gateway.api.negotiation import FORMAT_PARAMETERS, is_lenient, negotiate, respond
from gateway.api.outcome import FHIRError, FHIRResponse
from gateway.config import Role
from gateway.store import audit
from gateway.store.audit import Entity, OperatorAction, Outcome
from gateway.store.subscription_resource import SubscriptionInvalid, check_id
from gateway.store.subscriptions import StoredSubscription, SubscriptionStore

router = APIRouter(prefix="/fhir/Subscription", tags=["fhir"], dependencies=[Depends(negotiate)])
_operator = Depends(require_role(Role.operator))
#: Search parameters of ``GET /fhir/Subscription``.
SEARCH_PARAMETERS = ("_id", "status")


@router.get("", response_class=FHIRResponse)
def search(request: Request, principal: Principal = _operator) -> Response:
    """Every Subscription (one page), optionally by ``_id`` and ``status``."""
    wanted: dict[str, set[str]] = {}
    for name, value in request.query_params.multi_items():
        if name in FORMAT_PARAMETERS or name in ("_count", "_total"):
            continue
        if name not in SEARCH_PARAMETERS:
            if is_lenient(request):
                continue
            known = ", ".join(SEARCH_PARAMETERS)
            message = f"unknown search parameter {name!r} for Subscription (supported: {known})"
            raise FHIRError(400, message, "not-supported")
        values = {part for part in value.split(",") if part}
        wanted[name] = wanted[name] & values if name in wanted else values
    found = [
        stored
        for stored in _store(request).all()
        if stored.id in wanted.get("_id", {stored.id}) and stored.status in wanted.get("status", {stored.status})
    ]
    base = bundles.base_url(request)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/Subscription/{s.id}", "resource": s.resource(), "search": {"mode": "match"}}
            for s in found
        ],
    }
    return respond(request, bundle)


@router.get("/{resource_id}", response_class=FHIRResponse)
def read(resource_id: str, request: Request, principal: Principal = _operator) -> Response:
    _check(resource_id)
    stored = _store(request).get(resource_id)
    if stored is None:
        raise FHIRError(404, f"Subscription/{resource_id} is not known", "not-found")
    return respond(request, stored.resource(), headers=_headers(stored))


@router.post("", response_class=FHIRResponse)
async def create(request: Request, principal: Principal = _operator) -> Response:
    """create (http.html#create): the server chooses the id; an id in the body is ignored."""
    body = await _body(request)
    if isinstance(body, dict):
        body = {key: value for key, value in body.items() if key != "id"}
    stored = _put(request, body, str(uuid.uuid4()), principal)
    return respond(request, stored.resource(), 201, _headers(stored, location=True, request=request))


@router.put("/{resource_id}", response_class=FHIRResponse)
async def update(resource_id: str, request: Request, principal: Principal = _operator) -> Response:
    """update (http.html#update), or create with the client's id."""
    _check(resource_id)
    body = await _body(request)
    existed = _store(request).get(resource_id) is not None
    stored = _put(request, body, resource_id, principal)
    status = 200 if existed else 201
    return respond(request, stored.resource(), status, _headers(stored, location=not existed, request=request))


@router.delete("/{resource_id}")
def remove(resource_id: str, request: Request, principal: Principal = _operator) -> Response:
    """delete (http.html#delete): the Subscription and its queued notifications; 204 when it was
    not there either."""
    _check(resource_id)
    if _store(request).delete(resource_id):
        _audit(request, OperatorAction.subscription_delete, resource_id, principal)
    return Response(status_code=204)


def _put(request: Request, body: Any, resource_id: str, principal: Principal) -> StoredSubscription:
    try:
        stored, created = _store(request).put(body, resource_id)
    except SubscriptionInvalid as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    action = OperatorAction.subscription_create if created else OperatorAction.subscription_update
    _audit(request, action, resource_id, principal)
    return stored


def _audit(request: Request, action: OperatorAction, resource_id: str, principal: Principal) -> None:
    """The AuditEvent of a Subscription written or deleted (store/audit.py logs it too)."""
    audit.record(
        request.app.state.engine,
        action,
        principal.name,
        Outcome.success,
        [Entity("subscription", resource_id)],
        role=principal.role.value,
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 1 << 20:
        raise FHIRError(413, "a Subscription is at most 1 MiB", "too-costly")
    try:
        return fhirjson.loads(raw)
    except ValueError:
        raise FHIRError(400, "the body is not JSON (send application/fhir+json)", "structure") from None


def _headers(stored: StoredSubscription, location: bool = False, request: Request | None = None) -> dict[str, str]:
    modified = stored.last_updated.replace(tzinfo=UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    headers = {"ETag": f'W/"{stored.version_id}"', "Last-Modified": modified}
    if location and request is not None:
        headers["Location"] = f"{bundles.base_url(request)}/Subscription/{stored.id}/_history/{stored.version_id}"
    return headers


def _check(resource_id: str) -> None:
    try:
        check_id(resource_id)
    except SubscriptionInvalid as exc:
        raise FHIRError(400, str(exc)) from None


def _store(request: Request) -> SubscriptionStore:
    store: SubscriptionStore = request.app.state.subscriptions
    return store
