"""Liveness and readiness, without a token (docs/observability.md "Health and readiness").

``/health/live``: the API process serves (nothing else is asked). ``/health/ready``: the gateway
can take and process messages (gateway/readiness.py). ``/health``: the database answers (kept as
it was, for probes configured before the other two).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from gateway.readiness import ReadinessProbe

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> JSONResponse:
    """200 when the database answers a trivial query, 503 otherwise. Needs no token."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("health check: database unavailable: %s", exc)
        return JSONResponse({"status": "unavailable", "database": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/health/live")
async def live() -> JSONResponse:
    """200 while the process serves; on the event loop itself, so a busy thread pool cannot delay it."""
    return JSONResponse({"status": "live"})


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    """200 when Redis and the database answer and a live worker compiled its mappings, else 503;
    the body names each check with its outcome and reason."""
    probe: ReadinessProbe = request.app.state.readiness
    readiness = probe.check()
    if not readiness.ready:
        failed = ", ".join(f"{name}: {c.reason}" for name, c in readiness.checks.items() if not c.ok)
        log.debug("not ready: %s", failed)
    return JSONResponse(readiness.as_data(), status_code=200 if readiness.ready else 503)
