"""FHIR JSON responses, and every error as an OperationOutcome (operationoutcome.html), ours or FastAPI's."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import fhirjson
from gateway.api.admin_errors import admin_error, is_admin

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

# HTTP status -> OperationOutcome.issue.code (valueset-issue-type) when nothing more precise is known.
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    415: "not-supported",
    422: "processing",
    503: "transient",
}


class FHIRResponse(Response):
    """A JSON body rendered with orjson, served as application/fhir+json (http.html#mime-type); never
    with an empty array or object (``fhirjson.dumps_served``)."""

    media_type = FHIR_JSON

    def __init__(
        self,
        content: Any = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
        pretty: bool = False,
    ):
        self._options = orjson.OPT_INDENT_2 if pretty else 0  # set first: Response.__init__ renders
        super().__init__(content, status_code, headers, media_type)

    def render(self, content: Any) -> bytes:
        return fhirjson.dumps_served(content, option=self._options)


class FHIRError(Exception):
    """Raise in a route or dependency to answer with an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _ISSUE_CODES.get(status, "exception")
        self.headers = headers


def operation_outcome(diagnostics: str, code: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def outcome_response(
    status: int, diagnostics: str, code: str | None = None, headers: dict[str, str] | None = None
) -> FHIRResponse:
    body = operation_outcome(diagnostics, code or _ISSUE_CODES.get(status, "exception"))
    return FHIRResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error response an OperationOutcome, including routing 404/405 and validation errors
    (under /admin, where the API is not FHIR, the same errors as plain JSON: api/admin_errors.py)."""

    def answer(
        request: Request, status: int, diagnostics: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        if is_admin(request):
            return admin_error(status, diagnostics, headers)
        return outcome_response(status, diagnostics, code, headers)

    async def fhir_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FHIRError)
        return answer(request, exc.status, exc.diagnostics, exc.code, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return answer(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return answer(request, 400, f"invalid request: {problems}")

    async def database_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, (OperationalError, InterfaceError)):
            log.warning("database unavailable for %s %s: %s", request.method, request.url.path, exc)
            return answer(request, 503, "the database is unavailable; try again later", headers={"Retry-After": "5"})
        log.error("database error for %s %s", request.method, request.url.path, exc_info=exc)
        return answer(request, 500, "internal database error", "exception")

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("unhandled error for %s %s", request.method, request.url.path, exc_info=exc)
        return answer(request, 500, "internal server error", "exception")

    app.add_exception_handler(FHIRError, fhir_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(Exception, unexpected_error)
