"""A small synchronous client that calls an ASGI app in-process through httpx.ASGITransport.

Starlette's TestClient warns (an error here) unless httpx2 is installed; httpx's own transport
needs nothing extra and runs the app exactly as a server would, minus the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


class AsgiClient:
    def __init__(self, app: Any, token: str | None = None, base_url: str = "http://testserver"):
        self.app = app
        self.token = token
        self.base_url = base_url

    def request(self, method: str, url: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """Send one request; ``token`` (or the client's) becomes an ``Authorization: Bearer`` header."""
        headers = dict(kwargs.pop("headers", None) or {})
        bearer = token if token is not None else self.token
        if bearer:
            headers.setdefault("Authorization", f"Bearer {bearer}")

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                return await client.request(method, url, headers=headers, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)
