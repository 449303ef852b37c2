"""``POST /hl7/batch``: an HL7 v2 batch file uploaded, answered with its HL7 batch acknowledgement.

The body (raw HL7: application/hl7-v2, text/plain or application/octet-stream; gzip by
Content-Encoding or by its magic number) is streamed to a file in the data dir, never held in
memory, then imported as ``hl7gw import`` imports a file (the process running the API hands in
``app.state.batch_uploads``: the API may not import the services), in a thread: the reader and
the import block. The answer is the acknowledgement batch (chapter 2.10.3): only the messages
that were not accepted, each with its ERR; ``X-Import-Job`` names the import's job record.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import Principal, require_role
from gateway.api.outcome import FHIRError
from gateway.config import Role
from gateway.hl7.batch_sniff import file_starts_like_hl7

log = logging.getLogger(__name__)
HL7_V2 = "application/hl7-v2"
#: Where bodies are spooled, under the data dir; files named ``upload-*`` while being imported.
UPLOAD_DIR = "uploads"
#: Media types a batch may be sent as (parameters such as charset aside); none given is taken too.
ACCEPTED_TYPES = frozenset({HL7_V2, "text/plain", "application/octet-stream", "application/gzip", "application/x-gzip"})
_ACK_EXAMPLE = "BHS|^~\\&|GW|GWF|LAB|LABF|20240101120000||||B7F3...|BATCH-42\rMSH|...\rMSA|AR|MSG-2\rERR|...\rBTS|1\r"
_OUTCOME = {"application/fhir+json": {"example": {"resourceType": "OperationOutcome", "issue": []}}}


class BatchUploads(Protocol):
    """What the route needs of the import (gateway/services/batch_uploads.py BatchUploads)."""

    def import_upload(self, path: Path, who: str, role: str) -> tuple[bytes, dict[str, Any]]:
        """Import the batch file at ``path`` (blocking) for the token named ``who`` with ``role``
        (recorded as an AuditEvent); its batch ACK and a summary with at least ``job`` (the job
        id) and ``error`` (why the queue did not take every message, or None)."""
        ...


router = APIRouter(tags=["hl7"])
Operator = Annotated[Principal, Depends(require_role(Role.operator))]


@router.post(
    "/hl7/batch",
    response_class=Response,
    responses={
        200: {
            "description": "the HL7 batch acknowledgement: only the messages not accepted, with ERR",
            "content": {HL7_V2: {"example": _ACK_EXAMPLE}},
            "headers": {"X-Import-Job": {"description": "the import's job id (GET /admin/jobs/{id})"}},
        },
        400: {"description": "an empty body, or one that is not HL7 v2", "content": _OUTCOME},
        401: {"description": "no bearer token, or one that is not valid", "content": _OUTCOME},
        403: {"description": "the token's role is below operator", "content": _OUTCOME},
        413: {"description": "a body over HL7GW_BATCH_MAX_UPLOAD_BYTES", "content": _OUTCOME},
        415: {"description": "a Content-Type or Content-Encoding that is not a batch file", "content": _OUTCOME},
        503: {
            "description": "the queue did not take every message: the batch acknowledgement lists "
            "those not stored (AR, ERR 207); send the file again (duplicates are recognised)",
            "content": {HL7_V2: {}},
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                HL7_V2: {"schema": {"type": "string", "format": "binary"}},
                "text/plain": {"schema": {"type": "string"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def post_batch(request: Request, principal: Operator) -> Response:
    """Import an HL7 v2 batch file (FHS/BHS envelopes or none, any line ends, gzip) through the same
    intake as MLLP traffic; answered with its batch acknowledgement (docs/batch.md, POST /hl7/batch)."""
    uploads: BatchUploads | None = getattr(request.app.state, "batch_uploads", None)
    if uploads is None:
        raise FHIRError(503, "batch uploads are not available in this process (no queue)")
    _check_media(request)
    settings = request.app.state.settings
    limit: int = settings.inbox.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise FHIRError(413, f"the body is over {limit} bytes (HL7GW_BATCH_MAX_UPLOAD_BYTES)", "too-costly")
    spool = Path(settings.storage.data_dir) / UPLOAD_DIR
    spool.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix="upload-", suffix=".hl7", dir=spool)
    path = Path(name)
    try:
        size = 0
        with os.fdopen(descriptor, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise FHIRError(413, f"the body is over {limit} bytes (HL7GW_BATCH_MAX_UPLOAD_BYTES)", "too-costly")
                handle.write(chunk)
        if size == 0:
            raise FHIRError(400, "the body is empty: send an HL7 v2 batch file")
        if not await run_in_threadpool(file_starts_like_hl7, path):
            raise FHIRError(400, "the body is not HL7 v2: it does not start with an MSH, BHS or FHS segment")
        ack, summary = await run_in_threadpool(uploads.import_upload, path, principal.name, principal.role.value)
    finally:
        path.unlink(missing_ok=True)
    job = str(summary.get("job") or "")
    log.info(
        "POST /hl7/batch by %s (%s): %d bytes, import job %s: %s",
        principal.name,
        principal.role.value,
        size,
        job or "-",
        ", ".join(f"{k} {v}" for k, v in sorted(summary.items()) if k not in ("job", "error") and v is not None),
        extra={"outcome": "batch-upload"},
    )
    headers = {"X-Import-Job": job} if job else {}
    if summary.get("error"):
        return Response(ack, status_code=503, media_type=HL7_V2, headers={**headers, "Retry-After": "5"})
    return Response(ack, media_type=HL7_V2, headers=headers)


def _check_media(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media and media not in ACCEPTED_TYPES:
        raise FHIRError(
            415, f"Content-Type {media[:60]!r} is not a batch file: send {HL7_V2}, text/plain or octet-stream"
        )
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise FHIRError(415, f"Content-Encoding {encoding[:30]!r} is not taken: gzip or none")
