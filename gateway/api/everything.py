"""``GET|POST [base]/Patient/[id]/$everything`` (R4 OperationDefinition Patient-everything): a Patient's
record as a searchset Bundle, in pages with ``next`` links (gateway/store/everything.py says what it holds).

Parameters in the URL, or for POST in a Parameters body too: ``_since``, ``_type``, ``_count``, and
``_summary``/``_elements`` (applied to every entry; unprefixed ``_elements`` names apply to the Patient,
``Type.name`` to that type). ``start``/``end`` and other parameters are refused with 400 unless the
request says ``Prefer: handling=lenient`` (as a search does). The reader role; the admin-only types (the
audit trail) are left out for anyone else, and naming one in ``_type`` needs admin. An unknown Patient
is 404, a deleted one 410 (like a read), a malformed id 400. The answer is audited as a read of that
Patient. Included before the FHIR router: ``Patient/[id]/$everything`` is not a resource.
"""

from __future__ import annotations

import dataclasses
import re

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gateway import fhirjson
from gateway.api import bundles, scoped_access
from gateway.api.access_audit import record_access
from gateway.api.auth import ADMIN_ONLY_TYPES, Principal, check_role, require_role
from gateway.api.bulk_request import parameters_body
from gateway.api.negotiation import FORMAT_PARAMETERS, is_lenient, negotiate, respond
from gateway.api.outcome import FHIRError, FHIRResponse
from gateway.api.smart_scopes import Permission
from gateway.api.subsetting import requested_subset
from gateway.config import Role
from gateway.store.access_events import Interaction
from gateway.store.resources import ResourceStore
from gateway.store.search import ForbiddenType, SearchError, SearchResult

router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(negotiate)])

_reader = Depends(require_role(Role.reader))
#: datatypes.html#id: a resource id is 1-64 of letters, digits, "-" and ".".
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_MAX_BODY_BYTES = 1 << 20
#: The OperationDefinition, as the CapabilityStatement and the audit trail name it.
OPERATION = "Patient-everything"


@router.get("/Patient/{patient_id}/$everything", response_class=FHIRResponse)
def everything(patient_id: str, request: Request, principal: Principal = _reader) -> Response:
    return _everything(request, principal, patient_id, request.query_params.multi_items())


@router.post("/Patient/{patient_id}/$everything", response_class=FHIRResponse)
async def everything_by_post(patient_id: str, request: Request, principal: Principal = _reader) -> Response:
    """The same with no body, or a Parameters resource (its parameters join the URL's); paging links are GET URLs."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise FHIRError(413, f"a Parameters body is at most {_MAX_BODY_BYTES} bytes", "too-costly")
    params = list(request.query_params.multi_items())
    if body.strip():
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FHIRError(400, "the body is not JSON (a Parameters resource)") from None
        params += parameters_body(parsed, "$everything")
    return await run_in_threadpool(_everything, request, principal, patient_id, params)


def _everything(request: Request, principal: Principal, patient_id: str, params: list[tuple[str, str]]) -> Response:
    if not _ID.fullmatch(patient_id):
        raise FHIRError(400, "a resource id is 1-64 letters, digits, '-' and '.' (datatypes.html#id)")
    query: dict[str, list[str]] = {}
    for name, value in params:
        if name not in FORMAT_PARAMETERS:
            query.setdefault(name, []).append(value)
    subset = requested_subset("Patient", query)
    # SMART scopes: 403 when they do not reach Patients; a patient/ token's own Patient only (another is
    # unknown to it, as a read would say), and of its record only what the scopes let it read.
    bound = scoped_access.reach(principal, "Patient", Permission.read)
    store: ResourceStore = request.app.state.store
    stored = store.fetch("Patient", patient_id) if bound in (None, patient_id) else None
    if stored is None:
        raise FHIRError(404, f"Patient/{patient_id} is not known")
    if stored.deleted:
        raise FHIRError(410, f"Patient/{patient_id} was deleted")
    admin = principal.role is Role.admin
    kept = {name: values for name, values in query.items() if name not in ("_summary", "_elements")}
    if query.get("_summary") == ["count"]:
        kept["_summary"] = ["count"]
    try:
        page = store.everything(patient_id, kept, is_lenient(request), frozenset() if admin else ADMIN_ONLY_TYPES)
    except ForbiddenType:
        check_role(principal, Role.admin)
        raise
    except SearchError as exc:
        raise FHIRError(400, str(exc), exc.code) from None
    resources, included, total = page.resources, page.included, page.total
    if principal.access is not None and not principal.access.unlimited:
        resources = [r for r in resources if scoped_access.visible(principal, r)]
        included = [r for r in included if scoped_access.visible(principal, r)]
        total = None  # the store counted what the scopes may hide
    whole = SearchResult(
        resources,
        total,
        len(resources),
        included,
        page.next_cursor,
        None,
        page.warnings,
        page.ignored,
    )
    result = whole
    if not subset.whole:
        subsetted = [subset.apply(resource) for resource in whole.resources]
        result = dataclasses.replace(whole, resources=subsetted, included=[subset.apply(r) for r in whole.included])
    response = respond(request, bundles.searchset(request, result, params))
    if result.resources or result.included:
        answer = None if subset.whole else fhirjson.dumps(bundles.searchset(request, whole, params))
        what = f"Patient/{patient_id}"
        record_access(request, principal, Interaction.operation, response, what, answer=answer, operation=OPERATION)
    return response
