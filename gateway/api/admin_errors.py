"""Errors under ``/admin`` (the operators' JSON API, not FHIR): ``{"error": {"status", "message"}}``
as application/json, for every failure there, authentication and unknown routes included."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

#: Where the operators' API lives; errors under it are plain JSON, elsewhere OperationOutcomes.
ADMIN_PREFIX = "/admin"


def is_admin(request: Request) -> bool:
    path = request.url.path
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def admin_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)
