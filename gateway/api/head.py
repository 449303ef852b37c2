"""HEAD on every GET route (RFC 9110 9.3.2): the GET's status and headers, Content-Length included, no body.

An ASGI middleware routes a HEAD request as the GET it stands for and drops the body it answers
with, whatever the server; ``is_head`` tells a route that the answer will carry nothing (the access
audit trail records no HEAD: no resource leaves the server).
"""

from __future__ import annotations

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_MARK = "head_request"


class HeadAsGet:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        state = dict(scope.get("state") or {})
        state[_MARK] = True
        as_get = {**scope, "method": "GET", "state": state}

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the rest of a streamed body: nothing to send until the last part
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(as_get, receive, without_body)


def is_head(request: Request) -> bool:
    """Whether ``request`` came as HEAD (its answer goes without a body)."""
    return sent_as_head(request.scope)


def sent_as_head(scope: Scope) -> bool:
    return bool((scope.get("state") or {}).get(_MARK))
