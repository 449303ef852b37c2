"""FHIR Bulk Data Access (IG v2, export.html): $export kick-off, status polling, the files, cancel.

The API only records a job (gateway/store/export_jobs.py) and answers from it; the workers write
the files (gateway/services/exporter.py). Anyone with the reader role may export what a search
could return; AuditEvent only an admin who names it in ``_type``. Polling, downloading and deleting
an export is for the token that asked for it (or an admin). Each kick-off and each file downloaded
is recorded in the access audit trail (one AuditEvent each, naming the query: not every Patient).
These routes are included before the FHIR router: ``/fhir/$export`` and ``/fhir/Patient/$export``
would otherwise be a search and a read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from gateway import fhirjson
from gateway.api import bundles, scoped_access
from gateway.api.auth import ADMIN_ONLY_TYPES, Principal, require_role
from gateway.api.bulk_request import KickOff, check_headers, parameters_body, parse_kick_off
from gateway.api.outcome import FHIRError, FHIRResponse, operation_outcome
from gateway.config import ExportSettings, Role
from gateway.store.access_events import ExportAccess, export_event
from gateway.store.compartments import compartment_types
from gateway.store.export_files import FILE_NAME, job_dir, remove_job_files
from gateway.store.export_jobs import ACTIVE, ExportJob, ExportJobStore
from gateway.store.export_read import group_members, stored_types
from gateway.store.fhir_dates import format_instant

router = APIRouter(prefix="/fhir", tags=["bulk-export"])

_reader = Depends(require_role(Role.reader))
NDJSON = "application/fhir+ndjson"
#: Seconds a client is asked to wait between two polls of a running export.
RETRY_AFTER_S = 2
_STATUS, _FILE = "$export-status", "$export-file"


@router.get("/$export", response_class=FHIRResponse)
def system_export(request: Request, principal: Principal = _reader) -> Response:
    """export.html#endpoint---system-level-export"""
    return _kick_off(request, principal, "system", "", list(request.query_params.multi_items()))


@router.post("/$export", response_class=FHIRResponse)
async def system_export_post(request: Request, principal: Principal = _reader) -> Response:
    return _kick_off(request, principal, "system", "", await _posted(request))


@router.get("/Patient/$export", response_class=FHIRResponse)
def patient_export(request: Request, principal: Principal = _reader) -> Response:
    """export.html#endpoint---all-patients: the compartments of every Patient."""
    return _kick_off(request, principal, "patient", "", list(request.query_params.multi_items()))


@router.post("/Patient/$export", response_class=FHIRResponse)
async def patient_export_post(request: Request, principal: Principal = _reader) -> Response:
    return _kick_off(request, principal, "patient", "", await _posted(request))


@router.get("/Group/{group_id}/$export", response_class=FHIRResponse)
def group_export(group_id: str, request: Request, principal: Principal = _reader) -> Response:
    """export.html#endpoint---group-of-patients: the compartments of the Group's member Patients."""
    return _kick_off(request, principal, "group", group_id, list(request.query_params.multi_items()))


@router.post("/Group/{group_id}/$export", response_class=FHIRResponse)
async def group_export_post(group_id: str, request: Request, principal: Principal = _reader) -> Response:
    return _kick_off(request, principal, "group", group_id, await _posted(request))


@router.get("/" + _STATUS + "/{job_id}")
def export_status(job_id: str, request: Request, principal: Principal = _reader) -> Response:
    """export.html#bulk-data-status-request: 202 while running, 200 with the manifest, 5xx if failed."""
    job = _job(request, job_id, principal)
    if job.status in ACTIVE:
        kind = min(job.state.type_index + 1, len(job.types))
        progress = (
            "waiting for a worker"
            if job.status == "accepted"
            else f"type {kind} of {len(job.types)}, {job.state.written} resources written"
        )
        return Response(status_code=202, headers={"X-Progress": progress, "Retry-After": str(RETRY_AFTER_S)})
    if job.status == "failed":
        reason = job.notes[-1] if job.notes else "failed"
        raise FHIRError(500, f"the export failed ({reason}); start it again", "exception")
    expires = formatdate(job.expires_at / 1000, usegmt=True)
    # The manifest is not a FHIR resource: plain JSON, and its "error" array is there even when empty (the IG).
    manifest = fhirjson.dumps(_manifest(request, job))
    return Response(manifest, headers={"Expires": expires}, media_type="application/json")


@router.delete("/" + _STATUS + "/{job_id}", response_class=FHIRResponse)
def cancel_export(job_id: str, request: Request, principal: Principal = _reader) -> Response:
    """export.html#bulk-data-delete-request: 202, the export stops and its files are deleted."""
    job = _job(request, job_id, principal)
    if not _jobs(request).cancel(job.id):
        raise FHIRError(404, f"export {job_id} is not known")
    remove_job_files(_settings(request).directory, job.id)
    outcome = operation_outcome(f"export {job.id} cancelled; its files are deleted", "informational", "information")
    return FHIRResponse(outcome, status_code=202)


@router.get("/" + _FILE + "/{job_id}/{name}")
def export_file(job_id: str, name: str, request: Request, principal: Principal = _reader) -> Response:
    """export.html#file-request: one NDJSON file of a finished export, streamed from disk."""
    job = _job(request, job_id, principal)
    entry = next((f for f in job.state.files if f.name == name), None) if FILE_NAME.fullmatch(name) else None
    if job.status != "done" or entry is None:
        raise FHIRError(404, f"export {job_id} has no file {name[:80]!r} (yet)")
    path = job_dir(_settings(request).directory, job.id) / entry.name
    if not path.is_file():
        raise FHIRError(404, f"file {entry.name} of export {job_id} is gone (expired)")
    _record(request, principal, job, file=f"{bundles.base_url(request)}/{_FILE}/{job.id}/{entry.name}", kind=entry.type)
    return FileResponse(path, media_type=NDJSON, headers={"Cache-Control": "no-store"})


def _kick_off(request: Request, principal: Principal, level: str, group_id: str, params: list[Any]) -> Response:
    check_headers(request)
    scoped_access.require_unlimited(principal, "$export")
    kick_off = parse_kick_off(request, params, level, principal)
    engine = request.app.state.engine
    with engine.connect() as conn:
        if level == "group" and group_members(conn, group_id) is None:
            raise FHIRError(404, f"Group/{group_id[:64]} is not known")
        types = kick_off.types if kick_off.types is not None else _default_types(stored_types(conn), level)
    moment = datetime.now(UTC).replace(tzinfo=None)
    job = _jobs(request).create(
        level=level,
        group_id=group_id,
        request=_without_token(str(request.url)),
        types=types,
        since=kick_off.since,
        transaction_time=moment.replace(microsecond=moment.microsecond // 1000 * 1000),
        who=principal.name,
        role=principal.role.value,
        notes=kick_off.notes,
    )
    try:
        _record(request, principal, job)
    except FHIRError:
        _jobs(request).cancel(job.id)  # not audited: not done
        raise
    location = f"{bundles.base_url(request)}/{_STATUS}/{job.id}"
    return FHIRResponse(_accepted(kick_off, job), status_code=202, headers={"Content-Location": location})


def _default_types(stored: list[str], level: str) -> list[str]:
    """Every stored type (of the Patient compartment, below system level), the audit trail left out."""
    within = set(compartment_types())
    return [t for t in stored if t not in ADMIN_ONLY_TYPES and (level == "system" or t in within)]


def _accepted(kick_off: KickOff, job: ExportJob) -> dict[str, Any]:
    issues = [{"severity": "information", "code": "informational", "diagnostics": f"export {job.id} accepted"}]
    issues += [{"severity": "warning", "code": "informational", "diagnostics": note} for note in kick_off.notes]
    return {"resourceType": "OperationOutcome", "issue": issues}


def _manifest(request: Request, job: ExportJob) -> dict[str, Any]:
    """The complete-status manifest (export.html#response---complete-status)."""
    base = f"{bundles.base_url(request)}/{_FILE}/{job.id}/"

    def items(kind: str) -> list[dict[str, Any]]:
        return [
            {"type": f.type, "url": base + f.name, "count": f.count}
            for f in job.state.files
            if f.kind == kind and f.count
        ]

    manifest: dict[str, Any] = {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": True,
        "output": items("output"),
        "error": items("error"),
    }
    if job.since is not None:
        manifest["deleted"] = items("deleted")
    return manifest


def _job(request: Request, job_id: str, principal: Principal) -> ExportJob:
    """The export ``job_id``, if it is still there and ``principal`` may see it."""
    job = _jobs(request).get(job_id[:36])
    if job is None or job.status in ("cancelled", "expired"):
        raise FHIRError(404, f"export {job_id[:36]} is not known (cancelled, expired, or never asked)")
    if job.created_by != principal.name and principal.role is not Role.admin:
        raise FHIRError(403, "this export was asked for by another client", "forbidden")
    return job


def _record(request: Request, principal: Principal, job: ExportJob, file: str | None = None, kind: str = "") -> None:
    """Audit a kick-off or a download; 503 when the trail cannot take it (no data without a record)."""
    trail = request.app.state.audit_trail
    if trail is None or not request.app.state.access_audit:
        return
    client = request.client
    access = ExportAccess(
        job_id=job.id,
        who=principal.name,
        role=principal.role.value,
        client=client.host if client else None,
        server=bundles.base_url(request),
        request=job.request,
        recorded=datetime.now(UTC).replace(tzinfo=None),
        file=file,
        file_type=kind or None,
        group=job.group_id or None,
        request_id=request.headers.get("x-request-id"),
    )
    if not trail.submit(export_event(access)):
        raise FHIRError(503, "the access audit trail cannot record this now; try again later", "transient")


def _without_token(url: str) -> str:
    """The kick-off URL as recorded and repeated in the manifest: a token in the query is left out."""
    if "access_token" not in url:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"]
    return urlunsplit(parts._replace(query=urlencode(kept)))


async def _posted(request: Request) -> list[tuple[str, str]]:
    try:
        body = await request.json()
    except ValueError:
        raise FHIRError(400, "the body is not JSON") from None
    return parameters_body(body) + list(request.query_params.multi_items())


def _jobs(request: Request) -> ExportJobStore:
    return ExportJobStore(request.app.state.engine)


def _settings(request: Request) -> ExportSettings:
    settings: ExportSettings = request.app.state.settings.export
    return settings
