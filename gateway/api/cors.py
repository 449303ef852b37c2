"""CORS (fetch.spec.whatwg.org#http-cors-protocol) for browser and SMART apps: off unless
HL7GW_CORS_ORIGINS names the origins allowed (or ``*``).

A preflight (OPTIONS with Access-Control-Request-Method) is answered before authentication, as
browsers send it without credentials; every other answer, errors included, carries
Access-Control-Allow-Origin for an allowed origin. Apps send their token in Authorization (no
cookies), so credentials mode is not needed and ``*`` stays a plain wildcard.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

#: What the API answers to a browser: GET and HEAD everywhere, POST for [type]/_search and /hl7/batch.
ALLOWED_METHODS = ("GET", "HEAD", "POST", "OPTIONS")
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Prefer",
    "If-None-Match",
    "If-Modified-Since",
    "X-Request-Id",
)
#: Response headers a page's script may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = ("ETag", "Location", "Content-Location", "X-Progress", "Retry-After", "Last-Modified")
#: How long a browser may keep a preflight's answer.
PREFLIGHT_MAX_AGE_S = 600


def install_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    """Answer cross-origin requests from ``origins`` ("*": any); with none, the API stays same-origin only."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(ALLOWED_METHODS),
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=False,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
