"""GET /fhir/_history (history-system) and the history feed (``_sort=_lastUpdated``) over the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import delete, observation, patient, put, transaction

TOKENS = "ann:r-token:reader,ada:a-token:admin"
FEED = "/fhir/_history?_sort=_lastUpdated"


@pytest.fixture
def app(tmp_path: Path, engine: Engine) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS), engine)
    store = app.state.store
    store.apply_bundle(transaction(put(patient("p1", "MRN1")), put(observation("o1", "p1"))))
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Roe"))))
    store.apply_bundle(transaction(delete("Observation", "o1")))
    return app


def reader(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token="r-token")


def admin(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token="a-token")


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def seen(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["request"]["url"], e["response"]["etag"]) for e in bundle.get("entry", [])]


def flush_audit(app: FastAPI) -> None:
    assert app.state.audit_trail.flush(), "the trail did not write its queue"


def follow(client: AsgiClient, url: str) -> tuple[list[dict[str, Any]], str]:
    """Every entry from ``url`` on, page by page, until a page is empty; and the last next link."""
    entries: list[dict[str, Any]] = []
    while True:
        bundle = client.get(url).json()
        Bundle.model_validate(bundle)
        entries.extend(bundle.get("entry", []))  # an empty page has no entry (never an empty array)
        following = links(bundle)["next"]
        if "entry" not in bundle:
            return entries, following
        url = following


def test_the_feed_is_oldest_first_with_tombstones_and_always_a_next_link(app: FastAPI) -> None:
    client = reader(app)
    first = client.get(f"{FEED}&_count=2").json()
    Bundle.model_validate(first)
    assert first["type"] == "history"
    assert seen(first) == [("Patient/p1", 'W/"1"'), ("Observation/o1", 'W/"1"')]
    second = client.get(links(first)["next"]).json()
    assert seen(second) == [("Patient/p1", 'W/"2"'), ("Observation/o1", 'W/"2"')]
    tombstone = second["entry"][1]
    assert "resource" not in tombstone and tombstone["request"] == {"method": "DELETE", "url": "Observation/o1"}
    assert tombstone["response"]["status"] == "204 No Content" and tombstone["response"]["lastModified"].endswith("Z")
    assert second["entry"][0]["fullUrl"] == "http://testserver/fhir/Patient/p1"
    assert second["entry"][0]["resource"]["name"][0]["family"] == "Roe"

    caught_up = client.get(links(second)["next"]).json()
    assert "entry" not in caught_up and links(caught_up)["next"] == links(second)["next"]  # poll here again
    app.state.store.apply_bundle(transaction(put(patient("p2", "MRN2"))))
    assert seen(client.get(links(caught_up)["next"]).json()) == [("Patient/p2", 'W/"1"')]


def test_an_empty_store_links_to_itself_from_the_start(tmp_path: Path, engine: Engine) -> None:
    client = reader(create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS), engine))
    bundle = client.get(FEED).json()
    assert "entry" not in bundle and links(bundle)["next"] == "http://testserver" + FEED


def test_system_history_without_sort_is_newest_first_and_pages_backwards(app: FastAPI) -> None:
    client = reader(app)
    first = client.get("/fhir/_history?_count=3").json()
    Bundle.model_validate(first)
    assert seen(first) == [("Observation/o1", 'W/"2"'), ("Patient/p1", 'W/"2"'), ("Observation/o1", 'W/"1"')]
    app.state.store.apply_bundle(transaction(put(patient("p3", "MRN3"))))  # written while paging: above
    last = client.get(links(first)["next"]).json()
    assert seen(last) == [("Patient/p1", 'W/"1"')] and "next" not in links(last)
    assert seen(client.get("/fhir/_history?_sort=-_lastUpdated&_count=1").json()) == [("Patient/p3", 'W/"1"')]


def test_type_and_types(app: FastAPI) -> None:
    client = reader(app)
    observations = client.get("/fhir/Observation/_history?_sort=_lastUpdated").json()
    assert seen(observations) == [("Observation/o1", 'W/"1"'), ("Observation/o1", 'W/"2"')]
    assert "_sort=_lastUpdated" in links(observations)["next"]
    patients = client.get(f"{FEED}&_type=Patient").json()
    assert seen(patients) == [("Patient/p1", 'W/"1"'), ("Patient/p1", 'W/"2"')]
    both = client.get(f"{FEED}&_type=Observation,Patient").json()
    assert len(both["entry"]) == 4
    # type history without _sort keeps R4's order, and -_lastUpdated says the same
    newest = [("Observation/o1", 'W/"2"'), ("Observation/o1", 'W/"1"')]
    assert seen(client.get("/fhir/Observation/_history").json()) == newest
    assert seen(client.get("/fhir/Observation/_history?_sort=-_lastUpdated").json()) == newest


def test_since_filters_every_page(app: FastAPI) -> None:
    client = reader(app)
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "entry" not in client.get(f"{FEED}&_since={future}").json()
    past = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries, _ = follow(client, f"{FEED}&_since={past}&_count=1")
    assert len(entries) == 4


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        (f"{FEED}&_cursor=nope", 400, "position"),
        (f"{FEED}&_cursor=-5", 400, "position"),
        (f"{FEED}&_count=0", 400, "_count"),
        (f"{FEED}&_count=x", 400, "_count"),
        (f"{FEED}&_since=yesterday", 400, "_since"),
        (f"{FEED}&_type=Spaceship", 400, "Spaceship"),
        (f"{FEED}&_at=2020", 400, "unknown history parameter '_at'"),
        ("/fhir/_history?_sort=_id", 400, "_sort"),
        ("/fhir/Patient/_history?_sort=_lastUpdated&_type=Patient", 400, "unknown history parameter '_type'"),
        (f"{FEED}&_type=AuditEvent", 403, "role"),
        ("/fhir/AuditEvent/_history?_sort=_lastUpdated", 403, "role"),
    ],
)
def test_feed_errors(app: FastAPI, url: str, status: int, text: str) -> None:
    response = reader(app).get(url)
    assert response.status_code == status, response.text
    assert text in response.json()["issue"][0]["diagnostics"]


def test_lenient_feed_ignores_unknown_parameters(app: FastAPI) -> None:
    response = reader(app).get(f"{FEED}&_at=2020&_count=1", headers={"Prefer": "handling=lenient"})
    assert response.status_code == 200
    assert "_at" not in links(response.json())["self"] and "_at" not in links(response.json())["next"]


def test_audit_events_are_the_admins_only_and_readers_get_full_pages(app: FastAPI) -> None:
    client = reader(app)
    client.get("/fhir/Patient/p1")  # each read is recorded: AuditEvents in the history
    client.get("/fhir/Patient/p1")
    flush_audit(app)
    app.state.store.apply_bundle(transaction(put(patient("p2", "MRN2"))))
    flush_audit(app)

    entries, _ = follow(client, f"{FEED}&_count=1")
    assert [e["request"]["url"] for e in entries] == [
        "Patient/p1",
        "Observation/o1",
        "Patient/p1",
        "Observation/o1",
        "Patient/p2",
    ]
    page = client.get(f"{FEED}&_cursor={_position_after(app, 4)}&_count=1").json()
    assert seen(page) == [("Patient/p2", 'W/"1"')]  # the AuditEvents in between are skipped, not a short page
    everything, _ = follow(admin(app), f"{FEED}&_count=2")
    assert sum(e["request"]["url"].startswith("AuditEvent/") for e in everything) >= 2
    assert admin(app).get(f"{FEED}&_type=AuditEvent").status_code == 200


def _position_after(app: FastAPI, changes: int) -> str:
    """The cursor after the first ``changes`` changes of the whole feed (AuditEvents included)."""
    from gateway.store.feed import read_changes

    with ResourceStore(app.state.engine).engine.connect() as conn:
        position = read_changes(conn, None, changes).next_position
    assert position is not None
    return position


def test_reading_the_feed_is_recorded_as_history_system(app: FastAPI) -> None:
    client = reader(app)
    assert client.get(FEED).status_code == 200
    flush_audit(app)
    events = ResourceStore(app.state.engine).search("AuditEvent", {"subtype": ["history-system"]})
    (event,) = events
    assert event["action"] == "E"
    assert any(e.get("what", {}).get("reference") == "Patient/p1" for e in event["entity"])


def test_the_capability_statement_lists_history_system(app: FastAPI) -> None:
    statement = reader(app).get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    (rest,) = statement["rest"]
    assert {"code": "history-system"} in rest["interaction"]
    assert "_sort" in rest["documentation"] and "_type" in rest["documentation"]


def test_a_huge_count_is_the_largest_page(app: FastAPI) -> None:
    response = reader(app).get(f"{FEED}&_count={'9' * 5000}")
    assert response.status_code == 200 and len(response.json()["entry"]) == 4
