"""The dashboard: per sender, today's and the last hour's messages, the last one's time, failures and
open dead letters (the journal); queue depths and ages, workers and sink breakers (the same
scrape-time figures as /metrics). Its panel refreshes itself every few seconds (htmx)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.api.console.web import PREFIX, page, signed_in
from gateway.journal.sender_activity import sender_activity
from gateway.metrics.collector import CLOSED, HALF_OPEN, OPEN, GatewayCollector

router = APIRouter(prefix=PREFIX, include_in_schema=False)
BREAKER = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


@dataclass
class Runtime:
    """What Redis says now (empty when it did not answer)."""

    redis_up: bool = False
    workers: int | None = None
    queues: list[dict[str, Any]] = field(default_factory=list)
    breakers: list[dict[str, str]] = field(default_factory=list)


def runtime(collector: GatewayCollector | None) -> Runtime:
    """The scrape-time figures of ``collector`` (gateway/metrics/collector.py) read as the console shows them."""
    found = Runtime()
    if collector is None:
        return found
    by_queue: dict[str, dict[str, Any]] = {}
    for family in collector.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "hl7gw_redis_up":
                found.redis_up = value == 1
            elif name == "hl7gw_workers_alive":
                found.workers = int(value)
            elif name in ("hl7gw_queue_depth", "hl7gw_queue_oldest_age_seconds", "hl7gw_queue_delayed"):
                row = by_queue.setdefault(labels["queue"], {"queue": labels["queue"]})
                row[name.removeprefix("hl7gw_queue_")] = value
            elif name == "hl7gw_sink_breaker_state":
                found.breakers.append({"sink": labels["sink"], "state": BREAKER.get(int(value), "?")})
    found.queues = list(by_queue.values())
    return found


#: Dashboards open side by side share one reading of the figures at least this long (seconds);
#: longer when reading them is slow (a large day in the archive), so that the dashboards keep the
#: database busy a tenth of the time at most.
PANEL_TTL_S = 4.0
PANEL_BUSY_SHARE = 0.1


def _panel(request: Request) -> dict[str, Any]:
    """The figures, read again only when the last reading is older than its time to live."""
    cached: tuple[float, float, dict[str, Any]] | None = getattr(request.app.state, "console_panel", None)
    if cached is not None and time.monotonic() < cached[0] + cached[1]:
        return cached[2]
    started = time.monotonic()
    figures = _read_panel(request)
    ttl = max(PANEL_TTL_S, (time.monotonic() - started) / PANEL_BUSY_SHARE)
    request.app.state.console_panel = (time.monotonic(), ttl, figures)
    return figures


def _read_panel(request: Request) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    senders = sender_activity(request.app.state.engine, int(midnight.timestamp() * 1000), now_ms)
    collector: GatewayCollector | None = getattr(request.app.state, "gateway_collector", None)
    return {"senders": senders, "runtime": runtime(collector), "now_ms": now_ms}


@router.get("")
def dashboard(request: Request) -> HTMLResponse:
    return page(request, "dashboard.html", signed_in(request), **_panel(request))


@router.get("/dashboard/panel")
def panel(request: Request) -> HTMLResponse:
    """The dashboard's figures alone, for its refresh."""
    return page(request, "dashboard_panel.html", signed_in(request), **_panel(request))
