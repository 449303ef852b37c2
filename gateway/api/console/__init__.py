"""The operator console at /console (docs/console.md): server-rendered pages on the /admin API's
data and actions, signed-in by a session cookie, with htmx (vendored) to refresh what moves."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gateway.api.auth import TokenRegistry
from gateway.api.console import dashboard, jobs, letters, messages, signin, workbench
from gateway.api.console.session import KEY_FILE_NAME, SessionSigner
from gateway.api.console.web import HERE, PREFIX, SecurityHeaders, install_error_pages
from gateway.api.console.workbench import Workbench
from gateway.config import Settings

__all__ = ["Workbench", "install_console"]


def install_console(app: FastAPI, settings: Settings, tokens: TokenRegistry, test_message: Workbench | None) -> None:
    """Mount the console on ``app``: its routes, static files, error pages and security headers."""
    app.state.console_signer = SessionSigner.from_key_file(settings.storage.data_dir / KEY_FILE_NAME, tokens)
    app.state.console_workbench = test_message
    app.add_middleware(SecurityHeaders)
    install_error_pages(app)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for module in (signin, dashboard, messages, letters, jobs, workbench):
        app.include_router(module.router)
