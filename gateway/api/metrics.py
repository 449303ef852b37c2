"""``GET /metrics`` for Prometheus (the ``metrics`` or ``admin`` role), and the middleware that
counts and times every API request by its route template (never the raw path: it carries ids)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import require_metrics_reader
from gateway.metrics import NullRecorder
from gateway.metrics.exposition import render

router = APIRouter(tags=["metrics"])

#: Methods named in labels; anything else is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route matched (a 404 before routing, a bad method).
UNMATCHED = "unmatched"


@router.get("/metrics", dependencies=[Depends(require_metrics_reader)], include_in_schema=False)
def metrics(request: Request) -> Response:
    """Every process's metrics (multiprocess mode under ``hl7gw run``) and the scrape-time figures."""
    body, content_type = render(request.app.state.metrics_registry)
    return Response(body, headers={"Content-Type": content_type})


class RequestMetrics:
    """ASGI middleware: hl7gw_http_requests_total and hl7gw_http_request_duration_seconds."""

    def __init__(self, app: ASGIApp, recorder: NullRecorder):
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.recorder.enabled:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.recorder.http_request(
                template, method if method in _METHODS else "other", status, time.perf_counter() - started
            )
