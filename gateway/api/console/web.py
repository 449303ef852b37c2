"""What every console page shares: the templates (autoescaped), the security headers, reading a
form, the signed-in operator, the CSRF check, and error pages in HTML."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import check_role
from gateway.api.console.session import COOKIE, Session, SessionSigner
from gateway.api.outcome import FHIRError
from gateway.config import Role
from gateway.errors import OperatorRefused, QueueUnavailable

PREFIX = "/console"
HERE = Path(__file__).parent
#: No inline script or style anywhere: the pages load /console/static/* only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
#: Pages hold PHI: no cache keeps them (static files may be cached).
NO_STORE = (b"cache-control", b"no-store")
MAX_FORM_BYTES = 2_000_000


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["age"] = _age


class ConsoleError(Exception):
    """A console request refused or failed: an HTML page saying why, with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SecurityHeaders:
    """ASGI middleware: the security headers on every answer under /console, no-store on its pages."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] not in {name for name, _ in SECURITY_HEADERS}]
                headers += SECURITY_HEADERS
                if not static:
                    headers = [h for h in headers if h[0] != b"cache-control"] + [NO_STORE]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def signer(request: Request) -> SessionSigner:
    found: SessionSigner = request.app.state.console_signer
    return found


def current_session(request: Request) -> Session | None:
    return signer(request).session_of(request.cookies.get(COOKIE))


def signed_in(request: Request) -> Session:
    """The session of this request; a redirect to the sign-in page when there is none."""
    session = current_session(request)
    if session is None:
        raise _SignIn()
    request.state.principal = session.principal  # who a 403 refused, for the audit trail
    return session


def require(session: Session, minimum: Role) -> None:
    try:
        check_role(session.principal, minimum)
    except FHIRError as exc:
        raise ConsoleError(403, exc.diagnostics) from None


class _SignIn(Exception):
    """No session: answered with a redirect to the sign-in page."""


async def form_of(request: Request) -> dict[str, list[str]]:
    """The urlencoded form a POST carries (the console's forms are urlencoded, never multipart)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise ConsoleError(415, "the console's forms are sent urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ConsoleError(413, "the form is too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "the form cannot be read") from None


def first(form: dict[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0].strip()


async def checked_form(request: Request, session: Session) -> dict[str, list[str]]:
    """The form of a POST that changes something, after its CSRF token was checked (403 without)."""
    form = await form_of(request)
    presented = first(form, "csrf_token") or request.headers.get("x-csrf-token", "")
    if not signer(request).csrf_ok(session, presented):
        raise ConsoleError(403, "this form has no valid CSRF token: reload the page and try again")
    return form


def page(request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` with the operator, their CSRF token and ``context``."""
    csrf = signer(request).csrf_token(session) if session is not None else ""
    html = templates.get_template(name).render(
        principal=session.principal if session else None,
        csrf_token=csrf,
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def install_error_pages(app: Any) -> None:
    async def console_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleError)
        return page(request, "error.html", current_session(request), exc.status, message=exc.message)

    async def sign_in(request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request"):  # a refreshing panel: the whole page goes to sign in
            return Response(status_code=204, headers={"HX-Redirect": f"{PREFIX}/login"})
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    app.add_exception_handler(ConsoleError, console_error)
    app.add_exception_handler(_SignIn, sign_in)


def act(request: Request, action: str, *args: Any) -> dict[str, Any]:
    """Call the operator desk's ``action`` (the one /admin calls: same code, same audit); its
    refusals as 404/409/400 pages, no queue as 503."""
    desk = getattr(request.app.state, "desk", None)
    if desk is None:
        raise ConsoleError(503, "operator actions are not available in this process")
    try:
        result: dict[str, Any] = getattr(desk, action)(*args)
    except OperatorRefused as exc:
        raise ConsoleError(404 if exc.missing else 400 if exc.invalid else 409, str(exc)) from None
    except QueueUnavailable as exc:
        raise ConsoleError(503, str(exc)) from None
    return result
