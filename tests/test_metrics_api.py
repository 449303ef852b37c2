"""GET /metrics: its own role, the text format, and API requests counted by route template."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.app import create_app
from gateway.config import load_settings
from tests.support.asgi_client import AsgiClient

TOKENS = "prom:prom-token:metrics,reader:r-token:reader,ops:o-token:operator,root:a-token:admin"


@pytest.fixture
def app(tmp_path: Path, engine) -> FastAPI:  # type: ignore[no-untyped-def]
    return create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS), engine=engine)


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.mark.parametrize("token", ["prom-token", "a-token"])
def test_the_metrics_and_admin_roles_read_metrics_in_the_text_format(app: FastAPI, token: str) -> None:
    response = AsgiClient(app, token).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    found = samples(response.text)
    assert any(name == "hl7gw_build_info" for name, _ in found)
    assert found[("hl7gw_dead_letters_open", ())] == 0


@pytest.mark.parametrize("token", ["r-token", "o-token"])
def test_the_data_roles_may_not_read_metrics(app: FastAPI, token: str) -> None:
    response = AsgiClient(app, token).get("/metrics")
    assert response.status_code == 403
    assert "metrics role" in response.json()["issue"][0]["diagnostics"]


def test_metrics_needs_a_valid_token(app: FastAPI) -> None:
    assert AsgiClient(app).get("/metrics").status_code == 401
    assert AsgiClient(app, "nope").get("/metrics").status_code == 401


@pytest.mark.parametrize(
    "path", ["/fhir/Patient", "/fhir/Patient/p1", "/fhir/Patient/p1/_history", "/admin/dead-letters", "/admin/jobs"]
)
def test_a_metrics_token_reads_no_data(app: FastAPI, path: str) -> None:
    assert AsgiClient(app, "prom-token").get(path).status_code == 403


def test_requests_are_counted_by_route_template_never_by_raw_path(app: FastAPI) -> None:
    client = AsgiClient(app, "r-token")
    for patient in ("p-secret-1", "p-secret-2"):
        assert client.get(f"/fhir/Patient/{patient}").status_code == 404
    client.get("/no/such/route/p-secret-3")
    body = AsgiClient(app, "prom-token").get("/metrics").text
    assert "p-secret" not in body
    found = samples(body)
    read = (
        "hl7gw_http_requests_total",
        (("method", "GET"), ("route", "/fhir/{resource_type}/{resource_id}"), ("status", "404")),
    )
    assert found[read] >= 2
    unmatched = ("hl7gw_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))
    assert found[unmatched] >= 1
    timed = (
        "hl7gw_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/fhir/{resource_type}/{resource_id}")),
    )
    assert found[timed] >= 2
