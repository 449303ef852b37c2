"""What the FHIR API hands the access audit trail: each answer that carried resources, and each refused request.

``record_access`` is called by a route once its answer is ready: it hands the trail an ``Access``
(cheap: the answer's bytes as sent; the Patients in it are found by the trail's writer process) and
answers 503 instead of the data when the trail cannot take it (gateway/store/audit_relay.py: fail
closed). ``AuthFailureAudit`` is an ASGI middleware that turns every 401 and 403 answer into a
failed-authentication AuditEvent, with the route and the client's address and never the token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from fastapi import Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import Principal
from gateway.api.head import is_head, sent_as_head
from gateway.api.outcome import FHIRError
from gateway.store.access_events import Access, AuthFailure, Interaction, auth_failure_event
from gateway.store.audit_relay import AuditRelay

#: A token sent in the query string (RFC 6750 2.3) is never recorded.
_TOKEN_PARAMETER = "access_token"


def record_access(
    request: Request,
    principal: Principal,
    interaction: Interaction,
    response: Response,
    what: str | None = None,
    *,
    parameters: str | None = None,
    answer: bytes | None = None,
    operation: str | None = None,
) -> None:
    """Queue the audit record of ``response``, an answer that carried resources; raise 503 when it cannot be queued.

    ``parameters``: a search's parameters when they came in a body (POST [type]/_search), form-encoded;
    the request line then stays "POST /fhir/T/_search" and they become the query entity's content.
    ``answer``: what to find the Patients in when the response holds a subset (``_elements`` may have
    left the subject out): the whole answer. ``operation``: the OperationDefinition of an ``operation``
    interaction (``Patient-everything``). A HEAD request carried nothing and is not recorded.
    """
    trail: AuditRelay | None = request.app.state.audit_trail
    if trail is None or not request.app.state.access_audit or is_head(request):
        return
    client = request.client
    access = Access(
        interaction=interaction,
        who=principal.name,
        role=principal.role.value,
        client=client.host if client else None,
        server=str(request.base_url).rstrip("/") + "/fhir",
        request=_request_line(request.method, request.url.path, request.scope.get("query_string", b"")),
        answer=bytes(response.body) if answer is None else answer,
        recorded=datetime.now(UTC).replace(tzinfo=None),
        what=what,
        request_id=request.headers.get("x-request-id"),
        parameters=None if parameters is None else _without_token(parameters),
        operation=operation,
    )
    if not trail.submit(access):
        raise FHIRError(503, "the access audit trail cannot record this read now; try again later", "transient")


def _request_line(method: str, path: str, query: bytes) -> str:
    text = _without_token(query.decode("latin-1"))
    return f"{method} {path}?{text}" if text else f"{method} {path}"


def _without_token(text: str) -> str:
    if _TOKEN_PARAMETER not in text:
        return text
    return urlencode([(k, v) for k, v in parse_qsl(text, keep_blank_values=True) if k != _TOKEN_PARAMETER])


class AuthFailureAudit:
    """ASGI middleware: a 401 or 403 answer becomes a failed-authentication AuditEvent."""

    def __init__(self, app: ASGIApp, trail: AuditRelay):
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status in (401, 403):
            self._record(scope, status)

    def _record(self, scope: Scope, status: int) -> None:
        principal = scope.get("state", {}).get("principal")
        if status == 403:
            failure = AuthFailure.forbidden
        elif any(name == b"authorization" for name, _ in scope.get("headers", ())):
            failure = AuthFailure.invalid
        else:
            failure = AuthFailure.missing
        client = scope.get("client")
        event = auth_failure_event(
            failure,
            "HEAD" if sent_as_head(scope) else scope.get("method", "GET"),
            scope.get("path", ""),
            client[0] if client else None,
            datetime.now(UTC).replace(tzinfo=None),
            who=principal.name if isinstance(principal, Principal) else None,
        )
        self.trail.submit(event, wait=False)
