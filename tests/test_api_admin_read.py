"""The operators' read API under /admin: dead letters and messages, JSON, paged, operator role."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.convert.runtime.engine import Converter
from gateway.deliver.store_sink import StoreSink
from gateway.errors import MappingError, stage_of
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.messages import MessageArchive
from gateway.services.dead_letter_views import CurrentMappings
from gateway.services.failures import reason_of
from gateway.services.operator_actions import discard, purge
from gateway.services.pipeline import Pipeline
from tests.support.asgi_client import AsgiClient
from tests.support.messages import adt
from tests.support.queue import parsed_envelope

TOKENS = "r-token:reader,o-token:operator,a-token:admin"
ROUTES = ["/admin/dead-letters", "/admin/dead-letters/x", "/admin/messages", "/admin/messages/x"]


@pytest.fixture
def store_sink(engine: Engine) -> Iterator[StoreSink]:
    sink = StoreSink(engine)
    yield sink
    sink.close()


@pytest.fixture
def app(tmp_path: Path, engine: Engine) -> FastAPI:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS)
    return create_app(settings, engine, dry_run=CurrentMappings(settings.conversion).dry_run)


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token="o-token")


def fail(engine: Engine, store_sink: StoreSink, raw: bytes, created_at: int) -> Letter:
    """The real pipeline fails on ``raw``; its letter parked as the worker parks it."""
    envelope = parsed_envelope(raw, received_at=created_at)
    with pytest.raises(MappingError) as raised:
        Pipeline(Converter.load(), store_sink, MessageArchive(engine)).process(envelope)
    exc = raised.value
    letter = Letter(envelope, stage_of(exc), reason_of(exc), type(exc).__name__, 1, created_at)
    DeadLetterStore(engine).park(letter)
    return letter


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_needs_an_operator_token(app: FastAPI, route: str) -> None:
    anonymous = AsgiClient(app).get(route)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.headers["content-type"] == "application/json"
    assert anonymous.json()["error"]["status"] == 401
    assert AsgiClient(app, token="wrong").get(route).status_code == 401
    reader = AsgiClient(app, token="r-token").get(route)
    assert reader.status_code == 403 and "operator" in reader.json()["error"]["message"]


def test_a_dead_letter_in_full(client: AsgiClient, engine: Engine, store_sink: StoreSink) -> None:
    letter = fail(engine, store_sink, adt("API-1", "Doe", mrn=""), int(time.time() * 1000))
    response = client.get(f"/admin/dead-letters/{letter.id}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["stage"] == "convert" and body["attempts"] == 1 and body["status"] == "open"
    assert body["reason"].startswith("conversion failed at PID#2 (PID-2 Patient ID, PID-3 Patient Identifier List)")
    assert body["raw"].startswith("MSH|^~\\&|ADT|HOSP") and body["raw_base64"]
    pid = body["layout"][1]
    assert pid["segment"] == "PID" and {"field": "PID-5", "name": "Patient Name", "value": "Doe^Jane"} in pid["fields"]
    assert body["dry_run"]["converts"] is False and body["dry_run"]["location"]["segment"] == "PID#2"
    assert body["message"]["id"] == letter.envelope.id and body["message"]["status"] == "failed"
    assert client.get(f"/admin/dead-letters/{letter.id}?dry_run=false").json()["dry_run"] is None


def test_a_letter_whose_message_converts_now(client: AsgiClient, engine: Engine) -> None:
    envelope = parsed_envelope(adt("API-OK", "Doe"))
    letter = Letter(envelope, "convert", "conversion failed at PID#2: (an older mapping)", "MappingError")
    DeadLetterStore(engine).park(letter)
    dry = client.get(f"/admin/dead-letters/{letter.id}").json()["dry_run"]
    assert dry["converts"] is True and dry["resources"]["Patient"] == 1


def test_dead_letters_are_listed_filtered_and_paged(client: AsgiClient, engine: Engine, store_sink: StoreSink) -> None:
    now = int(time.time() * 1000)
    letters = [fail(engine, store_sink, adt(f"PG-{n}", "Doe", mrn=""), now - n * 1000) for n in range(5)]
    page = client.get("/admin/dead-letters?_count=2&stage=convert&status=open").json()
    assert [d["id"] for d in page["items"]] == [letters[0].id, letters[1].id] and page["count"] == 2
    assert "raw" not in page["items"][0]
    seen = [d["id"] for d in page["items"]]
    while page["next"]:
        page = client.get(page["next"].removeprefix("http://testserver")).json()
        seen += [d["id"] for d in page["items"]]
    assert seen == [letter.id for letter in letters]
    since = datetime.fromtimestamp((now - 1500) / 1000, tz=UTC).isoformat()
    assert client.get("/admin/dead-letters", params={"sender": "ADT|HOSP", "since": since}).json()["count"] == 2
    assert client.get("/admin/dead-letters", params={"sender": "LAB|MAIN"}).json()["count"] == 0
    assert client.get("/admin/dead-letters?stage=deliver").json() == {"items": [], "count": 0, "next": None}


def test_messages_by_control_id_and_a_message_life(client: AsgiClient, engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    good = parsed_envelope(adt("LIFE-1", "Doe"))
    pipeline.process(good)
    letter = fail(engine, store_sink, adt("LIFE-2", "Doe", mrn=""), int(time.time() * 1000))
    found = client.get("/admin/messages?control_id=LIFE-1").json()["items"]
    assert [m["id"] for m in found] == [good.id] and found[0]["status"] == "processed"
    assert [m["id"] for m in client.get("/admin/messages?status=failed").json()["items"]] == [letter.envelope.id]
    life = client.get(f"/admin/messages/{good.id}").json()
    assert life["status"] == "processed" and life["raw"].startswith("MSH|")
    assert any(r["reference"].startswith("Patient/") and r["outcome"] == "created" for r in life["resources"])
    failed = client.get(f"/admin/messages/{letter.envelope.id}").json()
    assert [d["id"] for d in failed["dead_letters"]] == [letter.id] and failed["resources"] == []


@pytest.mark.parametrize(
    "url",
    [
        "/admin/dead-letters?status=lost",
        "/admin/dead-letters?since=yesterday",
        "/admin/dead-letters?cursor=%25%25",
        "/admin/dead-letters?_count=0",
        "/admin/dead-letters?_count=many",
        "/admin/dead-letters?stag=convert",
        "/admin/messages?status=weird",
        "/admin/messages?controlid=1",
    ],
)
def test_a_bad_filter_is_a_400_in_json(client: AsgiClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 400 and response.json()["error"]["status"] == 400


def test_unknown_ids_and_routes_are_404_in_json(client: AsgiClient) -> None:
    for url in ("/admin/dead-letters/nope", "/admin/messages/nope", "/admin/nothing-here"):
        response = client.get(url)
        assert response.status_code == 404 and response.json()["error"]["status"] == 404, url


def test_the_admin_routes_are_in_the_openapi_description(client: AsgiClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in (
        "/admin/dead-letters",
        "/admin/dead-letters/{letter_id}",
        "/admin/messages",
        "/admin/messages/{message_id}",
    ):
        assert "get" in paths[route] and paths[route]["get"]["tags"] == ["admin"]
    # The FHIR API keeps answering errors as OperationOutcomes.
    assert client.get("/fhir/Patient/nope").json()["resourceType"] == "OperationOutcome"


def test_a_discarded_then_purged_letter_keeps_who_and_why(
    client: AsgiClient, engine: Engine, store_sink: StoreSink
) -> None:
    old = int(time.time() * 1000) - 10 * 86_400_000
    letter = fail(engine, store_sink, adt("GONE-1", "Doe", mrn=""), old)
    discard(engine, letter.id, "cli:alice", "sent twice by the lab")
    body = client.get(f"/admin/dead-letters/{letter.id}").json()
    assert body["status"] == "discarded" and body["handled_by"] == "cli:alice"
    assert body["handled_note"] == "sent twice by the lab" and body["raw"].startswith("MSH|")
    assert purge(engine, 5, "cli:alice") == 1
    body = client.get(f"/admin/dead-letters/{letter.id}").json()
    assert body["raw_purged"] is True and body["raw"] is None and body["layout"] is None and body["dry_run"] is None
    assert body["reason"].startswith("conversion failed at PID#2")
