"""A browser-less client of the operator console: keeps its cookies, signs in, reads the CSRF token
of a page's forms. In-process (ASGI) for the console's unit tests."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class ConsoleClient:
    def __init__(self, app: Any, base_url: str = "http://testserver"):
        self.app = app
        self.base_url = base_url
        self.cookies = httpx.Cookies()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url, cookies=self.cookies) as client:
                response = await client.request(method, url, **kwargs)
                self.cookies = client.cookies
                return response

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, data=data or {}, **kwargs)

    def sign_in(self, token: str) -> httpx.Response:
        form = self.get("/console/login")
        return self.post("/console/login", {"token": token, "csrf_token": csrf_of(form.text)})

    def submit(self, page_url: str, action: str, data: dict[str, Any] | None = None) -> httpx.Response:
        """POST ``data`` to ``action`` with the CSRF token of the page at ``page_url``, as its form would."""
        token = csrf_of(self.get(page_url).text)
        return self.post(action, {"csrf_token": token, **(data or {})})
