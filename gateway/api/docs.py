"""The API's own description: ``/openapi.json``, Swagger UI at ``/docs`` and ReDoc at ``/redoc``.

Served offline (the pages' scripts and styles come from the fastapi-offline package, never from a
CDN: a hospital network often has no way out), and behind a reader token unless
HL7GW_PUBLIC_DOCS=true. The scripts and styles themselves are public: they are the same for everyone.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gateway.api.auth import require_role
from gateway.api.outcome import FHIRError
from gateway.config import Role

STATIC = "/docs/static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def install_docs(app: FastAPI, public: bool) -> None:
    """Add the documentation routes (the app is made with docs_url, redoc_url, openapi_url None)."""
    guard = [] if public else [Depends(require_role(Role.reader))]
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json", dependencies=guard)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs", dependencies=guard)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
        )

    @router.get("/redoc", dependencies=guard)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon.png",
            with_google_fonts=False,
        )

    @router.get(STATIC + "/{name}")
    def asset(name: str, request: Request) -> Response:
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise FHIRError(404, f"no documentation asset {name[:64]!r}")
        content = (resources.files("fastapi_offline") / "static" / name).read_bytes()
        return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(router)
