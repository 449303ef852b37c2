"""Sign in with an API token (operators and admins), sign out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.console.session import COOKIE, COOKIE_PATH, LOGIN_COOKIE, LOGIN_TTL_S, may_use_console
from gateway.api.console.web import PREFIX, checked_form, current_session, first, form_of, page, signed_in, signer

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _secure(request: Request) -> bool:
    """Secure cookies when the console is served over TLS (directly, or behind a proxy saying so)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _login_page(request: Request, status: int = 200, message: str = "") -> HTMLResponse:
    nonce, form_token = signer(request).login_nonce()
    answer = page(request, "login.html", None, status, login_token=form_token, message=message)
    answer.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return answer


@router.get("/login")
def login_form(request: Request) -> Response:
    if current_session(request) is not None:
        return RedirectResponse(PREFIX, status_code=303)
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await form_of(request)
    keys = signer(request)
    if not keys.login_ok(request.cookies.get(LOGIN_COOKIE), first(form, "csrf_token")):
        return _login_page(request, 403, "The sign-in form had expired or was not this console's. Try again.")
    made = keys.sign_in(first(form, "token"))
    if made is None:
        return _login_page(request, 401, "That token is not known to this gateway.")
    session, cookie = made
    if not may_use_console(session.principal.role):
        request.state.principal = session.principal  # recorded as a refused sign-in
        role = session.principal.role.value
        return _login_page(request, 403, f"A {role} token cannot use the console: it needs an operator or admin token.")
    answer = RedirectResponse(PREFIX, status_code=303)
    answer.set_cookie(
        COOKIE,
        cookie,
        max_age=keys.ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    answer.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return answer


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request, signed_in(request))
    answer = RedirectResponse(f"{PREFIX}/login", status_code=303)
    answer.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return answer
