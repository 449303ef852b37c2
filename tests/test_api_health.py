"""GET /health: 200 when the database answers, 503 when it does not."""

from __future__ import annotations

from pathlib import Path

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.db.engine import make_engine
from tests.support.asgi_client import AsgiClient


def test_health_is_ok_when_the_database_answers(tmp_path: Path) -> None:
    response = AsgiClient(create_app(load_settings(data_dir=tmp_path, api_tokens="t:reader"))).get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_health_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    try:
        response = AsgiClient(create_app(load_settings(data_dir=tmp_path, api_tokens="t:reader"), engine)).get(
            "/health"
        )
    finally:
        engine.dispose()

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unavailable"}
