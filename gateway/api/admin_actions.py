"""The operators' actions under ``/admin`` (JSON): replay a dead letter (as it was, or an edited
copy), discard one (admin), start a bulk replay or a reprocess job, follow and control jobs.

Each action is the same as the command line's (gateway/services/operator_actions.py, which the
process running the API hands in as ``app.state.desk``: the API may not import the services) and
is recorded as an AuditEvent naming the token's name and role.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.api.admin import Count, _check_parameters, _engine
from gateway.api.admin_errors import ADMIN_PREFIX
from gateway.api.auth import Principal, require_role
from gateway.api.outcome import FHIRError
from gateway.config import Role
from gateway.errors import OperatorRefused, QueueUnavailable
from gateway.journal.filters import FilterError, parse_since
from gateway.journal.jobs import JobStore

_ERROR = {"content": {"application/json": {"example": {"error": {"status": 409, "message": "... is replayed"}}}}}
router = APIRouter(
    prefix=ADMIN_PREFIX,
    tags=["admin"],
    responses={
        400: {"description": "a body or filter that cannot be read", **_ERROR},
        401: {"description": "no bearer token, or one that is not valid", **_ERROR},
        403: {"description": "the token's role is too low for this action", **_ERROR},
        404: {"description": "no dead letter or job with that id", **_ERROR},
        409: {"description": "the letter or job is not in a state for this action", **_ERROR},
        503: {"description": "no queue (Redis) to replay onto from this process", **_ERROR},
    },
)
Operator = Annotated[Principal, Depends(require_role(Role.operator))]
Admin = Annotated[Principal, Depends(require_role(Role.admin))]


class Desk(Protocol):
    """What the API needs of the operator actions (services/operator_actions.py OperatorDesk)."""

    def replay(self, letter_id: str, who: str, role: str, raw: bytes | None) -> dict[str, Any]: ...
    def discard(self, letter_id: str, who: str, role: str, reason: str) -> dict[str, Any]: ...
    def start_job(self, kind: Any, filter: dict[str, Any], who: str, role: str) -> dict[str, Any]: ...
    def control_job(self, job_id: str, action: str, who: str, role: str) -> dict[str, Any]: ...


def _desk(request: Request) -> Desk:
    desk: Desk | None = getattr(request.app.state, "desk", None)
    if desk is None:
        raise FHIRError(503, "operator actions are not available in this process")
    return desk


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object the request carries ({} when it carries nothing)."""
    if not await request.body():
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise FHIRError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise FHIRError(400, "the body is a JSON object")
    return body


def _act(action: Any, *args: Any) -> dict[str, Any]:
    """Call a desk action, its refusals as 404/409/400, a missing queue as 503."""
    try:
        result: dict[str, Any] = action(*args)
    except OperatorRefused as exc:
        status = 404 if exc.missing else 400 if exc.invalid else 409
        raise FHIRError(status, str(exc)) from None
    except QueueUnavailable as exc:
        raise FHIRError(503, str(exc)) from None
    return result


def _edited(body: dict[str, Any]) -> bytes | None:
    if "raw" in body and "raw_base64" in body:
        raise FHIRError(400, "give the edited message as raw (text) or raw_base64, not both")
    if "raw_base64" in body:
        try:
            return base64.b64decode(str(body["raw_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise FHIRError(400, "raw_base64 is not base64") from None
    if "raw" in body:
        if not isinstance(body["raw"], str) or not body["raw"].strip():
            raise FHIRError(400, "raw is the edited message as text")
        return str(body["raw"]).replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
    return None


@router.post("/dead-letters/{letter_id}/replay", status_code=202)
async def replay(letter_id: str, request: Request, principal: Operator) -> JSONResponse:
    """Put the letter's message back on the queue, or an edited copy (``{"raw": "MSH|..."}`` or
    ``{"raw_base64": ...}``); the letter keeps the bytes it came with. 409 if it is not open."""
    body = await _body(request)
    unknown = sorted(set(body) - {"raw", "raw_base64"})
    if unknown:
        raise FHIRError(400, f"unknown field(s) {', '.join(k[:40] for k in unknown)}: raw or raw_base64")
    done = _act(_desk(request).replay, letter_id, principal.name, principal.role.value, _edited(body))
    return JSONResponse(done, status_code=202)


@router.post("/dead-letters/{letter_id}/discard")
async def discard(letter_id: str, request: Request, principal: Admin) -> JSONResponse:
    """Mark an open letter discarded (``{"reason": "..."}``, required); nothing is deleted. Admin only."""
    reason = (await _body(request)).get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise FHIRError(400, 'a discard needs {"reason": "..."}')
    return JSONResponse(_act(_desk(request).discard, letter_id, principal.name, principal.role.value, reason))


def _job_filter(body: dict[str, Any]) -> dict[str, Any]:
    """A job's filter from the body: ``since``/``until`` as ISO date-times or ages (since only)."""
    filter = dict(body)
    for key in ("since", "until"):
        value = filter.get(key)
        if isinstance(value, str):
            try:
                filter[key] = parse_since(value)
            except FilterError as exc:
                raise FHIRError(400, str(exc).replace("since", key, 1)) from None
    return filter


@router.post("/replays", status_code=202)
async def replays(request: Request, principal: Operator) -> JSONResponse:
    """Start a job replaying every open letter the filter matches: ``{"stage", "sender", "error_type",
    "reason", "since", "until"}`` (all optional). The job runs in the workers at HL7GW_REPLAY_RATE."""
    filter = _job_filter(await _body(request))
    job = _act(_desk(request).start_job, "replay", filter, principal.name, principal.role.value)
    return JSONResponse(job, status_code=202)


@router.post("/reprocess", status_code=202)
async def reprocess(request: Request, principal: Operator) -> JSONResponse:
    """Start a job running the archived messages the filter matches through the current mappings:
    ``{"sender", "message_type", "status", "since", "until"}`` (status processed or failed)."""
    filter = _job_filter(await _body(request))
    job = _act(_desk(request).start_job, "reprocess", filter, principal.name, principal.role.value)
    return JSONResponse(job, status_code=202)


@router.get("/jobs", dependencies=[Depends(require_role(Role.operator))])
def jobs(request: Request, count: Count = 50) -> JSONResponse:
    """Jobs, newest first, with their progress."""
    _check_parameters(request, {"_count"})
    return JSONResponse({"items": [j.as_data() for j in JobStore(_engine(request)).list(limit=count)]})


@router.get("/jobs/{job_id}", dependencies=[Depends(require_role(Role.operator))])
def job(job_id: str, request: Request) -> JSONResponse:
    _check_parameters(request, set())
    found = JobStore(_engine(request)).get(job_id)
    if found is None:
        raise FHIRError(404, f"no job {job_id[:64]}")
    return JSONResponse(found.as_data())


@router.post("/jobs/{job_id}/{action}")
def control(job_id: str, action: str, request: Request, principal: Operator) -> JSONResponse:
    """``cancel``, ``pause`` or ``resume`` a job."""
    if action not in ("cancel", "pause", "resume"):
        raise FHIRError(404, f"no job action {action[:20]!r}: cancel, pause or resume")
    return JSONResponse(_act(_desk(request).control_job, job_id, action, principal.name, principal.role.value))
