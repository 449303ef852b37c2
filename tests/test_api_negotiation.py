"""Content negotiation: Accept and _format, JSON flavours, _pretty, 406 for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from gateway.api.app import create_app
from gateway.config import load_settings
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import patient, put, transaction


@pytest.fixture
def client(tmp_path: Path) -> AsgiClient:
    app: FastAPI = create_app(load_settings(data_dir=tmp_path, api_tokens="t:reader"))
    app.state.store.apply_bundle(transaction(put(patient("p1", "MRN1"))))
    return AsgiClient(app, token="t")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/fhir+json"),
        ("application/fhir+json", "application/fhir+json"),
        ("application/fhir+json; fhirVersion=4.0", "application/fhir+json"),
        ("application/json+fhir", "application/fhir+json"),
        ("application/json", "application/json"),
        ("*/*", "application/fhir+json"),
        ("text/html, application/json;q=0.9, */*;q=0.8", "application/json"),
        ("application/json;q=0.5, application/fhir+json", "application/fhir+json"),
        ("application/fhir+json;q=0.5, application/json", "application/json"),
        ("application/json, application/fhir+json", "application/fhir+json"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/fhir/Patient/p1", "/fhir/Patient?_id=p1", "/fhir/Patient/p1/_history", "/fhir/metadata"]
)
def test_accept_header(client: AsgiClient, path: str, accept: str | None, media_type: str) -> None:
    response = client.get(path, headers={"Accept": accept} if accept else {})

    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.json()["resourceType"]


@pytest.mark.parametrize(
    ("value", "media_type"),
    [
        ("json", "application/fhir+json"),
        ("application/fhir+json", "application/fhir+json"),
        ("application/fhir json", "application/fhir+json"),  # an unencoded "+" decoded to a space
        ("application/json", "application/json"),
    ],
)
def test_format_parameter_wins_over_accept(client: AsgiClient, value: str, media_type: str) -> None:
    response = client.get("/fhir/Patient/p1", params={"_format": value}, headers={"Accept": "application/xml"})

    assert response.status_code == 200
    assert response.headers["content-type"] == media_type


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({}, {"Accept": "application/fhir+xml"}),
        ({}, {"Accept": "text/html, application/json;q=0"}),
        ({"_format": "xml"}, {}),
        ({"_format": "text/turtle"}, {}),
    ],
)
def test_other_formats_are_406(client: AsgiClient, params: dict[str, str], headers: dict[str, str]) -> None:
    response = client.get("/fhir/Patient/p1", params=params, headers=headers)

    assert response.status_code == 406
    assert response.json()["issue"][0]["code"] == "not-supported"


def test_pretty(client: AsgiClient) -> None:
    compact = client.get("/fhir/Patient/p1").text
    pretty = client.get("/fhir/Patient/p1?_pretty=true").text

    assert "\n" not in compact and "\n  " in pretty
    bundle = client.get("/fhir/Patient?_pretty=true&_format=json").json()
    assert bundle["link"][0]["url"] == "http://testserver/fhir/Patient?_pretty=true&_format=json"
