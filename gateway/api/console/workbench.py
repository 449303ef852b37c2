"""Send a test message: a pasted HL7 v2 message through the converter as ``hl7gw convert --report``
does (nothing is queued or stored), its Bundle and what the maps left unused: the interface
analyst's mapping workbench. The conversion is given by the process running the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.api.console.web import PREFIX, ConsoleError, checked_form, page, signed_in

#: raw message -> the conversion's report (services/dead_letter_views.py CurrentMappings.workbench).
Workbench = Callable[[bytes], dict[str, Any]]
router = APIRouter(prefix=f"{PREFIX}/test-message", include_in_schema=False)


def _workbench(request: Request) -> Workbench:
    found: Workbench | None = getattr(request.app.state, "console_workbench", None)
    if found is None:
        raise ConsoleError(503, "this process has no converter for test messages")
    return found


@router.get("")
def form(request: Request) -> HTMLResponse:
    return page(request, "test_message.html", signed_in(request), raw="", result=None)


@router.post("")
async def convert(request: Request) -> HTMLResponse:
    session = signed_in(request)
    raw = (await checked_form(request, session)).get("raw", [""])[0]
    if not raw.strip():
        raise ConsoleError(400, "paste an HL7 v2 message first")
    message = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r").encode("utf-8")
    return page(request, "test_message.html", session, raw=raw, result=_workbench(request)(message))
