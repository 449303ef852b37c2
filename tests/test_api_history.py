"""History (instance and type) and conditional reads: ETag, If-None-Match, Last-Modified, If-Modified-Since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle

from gateway.api.app import create_app
from gateway.config import load_settings
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import delete, observation, patient, put, transaction


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens="t:reader"))
    store = app.state.store
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="First")), put(observation("o1", "p1"))))
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Second"))))
    store.apply_bundle(transaction(delete("Patient", "p1")))
    store.apply_bundle(transaction(put(patient("p2", "MRN2"))))
    return app


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token="t")


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def test_instance_history_lists_every_version_newest_first(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient/p1/_history")

    assert response.status_code == 200
    bundle = response.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"] for e in entries] == [
        {"method": "DELETE", "url": "Patient/p1"},
        {"method": "PUT", "url": "Patient/p1"},
        {"method": "PUT", "url": "Patient/p1"},
    ]
    assert [e["response"]["status"] for e in entries] == ["204 No Content", "200 OK", "201 Created"]
    assert "resource" not in entries[0]
    assert [e["resource"]["name"][0]["family"] for e in entries[1:]] == ["Second", "First"]
    assert all(e["fullUrl"] == "http://testserver/fhir/Patient/p1" for e in entries)
    assert entries[0]["response"]["lastModified"].endswith("Z")


def test_type_history_pages_with_next_links(app: FastAPI, client: AsgiClient) -> None:
    first = client.get("/fhir/Patient/_history?_count=2").json()
    app.state.store.apply_bundle(transaction(put(patient("p3", "MRN3"))))  # written while paging
    second = client.get(links(first)["next"]).json()

    seen = [(e["request"]["url"], e["response"]["etag"]) for e in first["entry"] + second["entry"]]
    assert seen == [
        ("Patient/p2", 'W/"1"'),
        ("Patient/p1", 'W/"3"'),
        ("Patient/p1", 'W/"2"'),
        ("Patient/p1", 'W/"1"'),
    ]
    assert "next" not in links(second)
    assert len(client.get("/fhir/Patient/_history").json()["entry"]) == 5
    assert [e["request"]["url"] for e in client.get("/fhir/Observation/_history").json()["entry"]] == ["Observation/o1"]


def test_history_since(client: AsgiClient) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert client.get("/fhir/Patient/_history", params={"_since": future}).json().get("entry") is None
    assert len(client.get("/fhir/Patient/_history", params={"_since": "2000-01-01"}).json()["entry"]) == 4
    assert client.get("/fhir/Patient/p1/_history?_since=2000-01-01T00:00:00+00:00").status_code == 200


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        ("/fhir/Patient/nobody/_history", 404, "Patient/nobody is not known"),
        ("/fhir/Patient/_history?_since=yesterday", 400, "_since"),
        ("/fhir/Patient/_history?_count=0", 400, "_count"),
        ("/fhir/Patient/_history?_at=2020", 400, "unknown history parameter '_at'"),
        ("/fhir/Patient/_history?_cursor=xyz", 400, "_cursor"),
        ("/fhir/Spaceship/_history", 404, "not supported"),
    ],
)
def test_history_errors(client: AsgiClient, url: str, status: int, text: str) -> None:
    response = client.get(url)

    assert response.status_code == status
    assert text in response.json()["issue"][0]["diagnostics"]


def test_lenient_history_ignores_unknown_parameters(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient/_history?_at=2020&_count=1", headers={"Prefer": "handling=lenient"})

    assert response.status_code == 200
    assert links(response.json())["self"] == "http://testserver/fhir/Patient/_history?_count=1"


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": 'W/"1"'}, 304),
        ({"If-None-Match": '"1"'}, 304),
        ({"If-None-Match": "1"}, 304),  # what fhirpy's refresh() sends
        ({"If-None-Match": 'W/"7", W/"1"'}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": 'W/"2"'}, 200),
        ({"If-Modified-Since": "FUTURE"}, 304),
        ({"If-Modified-Since": "PAST"}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-None-Match": 'W/"2"', "If-Modified-Since": "FUTURE"}, 200),  # If-None-Match wins
        ({}, 200),
    ],
)
def test_conditional_read(client: AsgiClient, headers: dict[str, str], status: int) -> None:
    now = datetime.now(UTC)
    dates = {"FUTURE": http_date(now + timedelta(hours=1)), "PAST": http_date(now - timedelta(days=1))}
    sent = {name: dates.get(value, value) for name, value in headers.items()}

    response = client.get("/fhir/Patient/p2", headers=sent)

    assert response.status_code == status
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith(" GMT")
    if status == 304:
        assert response.content == b""
    else:
        assert response.json()["id"] == "p2"


def test_last_modified_is_the_version_time(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient/p2")
    stamp = datetime.fromisoformat(response.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))

    assert response.headers["last-modified"] == http_date(stamp)
    exactly = client.get("/fhir/Patient/p2", headers={"If-Modified-Since": response.headers["last-modified"]})
    assert exactly.status_code == 304


def test_conditional_vread(client: AsgiClient) -> None:
    assert client.get("/fhir/Patient/p1/_history/2", headers={"If-None-Match": 'W/"2"'}).status_code == 304
    assert client.get("/fhir/Patient/p1/_history/1", headers={"If-None-Match": 'W/"2"'}).status_code == 200
    assert client.get("/fhir/Patient/p1/_history/3").status_code == 410
