"""The audit trail through the FHIR API: admins read and search AuditEvents; nobody else sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.audit import ENTITY_SYSTEMS, Entity, OperatorAction, Outcome, record
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import patient, put, transaction

TOKENS = "ann:r-token:reader,otto:o-token:operator,ada:a-token:admin,legacy-admin:admin"
FORBIDDEN_TO = ["r-token", "o-token"]


@pytest.fixture
def app(tmp_path: Path, engine: Engine) -> FastAPI:
    # These tests are about operator actions: reads of the trail would add access records (test_api_access_audit.py).
    return create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS, access_audit=False), engine)


@pytest.fixture
def events(app: FastAPI) -> dict[str, str]:
    """Two recorded actions, as the replay and discard commands will record them."""
    store = app.state.store
    return {
        "replay": record(
            store,
            OperatorAction.replay,
            "otto",
            Outcome.success,
            [Entity("dead-letter", 5), Entity("message", "env-new")],
            role="operator",
        ),
        "discard": record(
            store, OperatorAction.discard, "ada", Outcome.success, [Entity("dead-letter", 6, {"reason": "test"})]
        ),
    }


def matches(body: dict[str, Any]) -> set[str]:
    Bundle.model_validate(body)
    return {e["resource"]["id"] for e in body.get("entry", []) if e.get("search", {}).get("mode") == "match"}


def included_types(body: dict[str, Any]) -> list[str]:
    return [e["resource"]["resourceType"] for e in body.get("entry", []) if e["search"]["mode"] == "include"]


def routes(event_id: str) -> list[str]:
    return [
        "/fhir/AuditEvent",
        "/fhir/AuditEvent?subtype=replay",
        f"/fhir/AuditEvent/{event_id}",
        f"/fhir/AuditEvent/{event_id}/_history",
        f"/fhir/AuditEvent/{event_id}/_history/1",
        "/fhir/AuditEvent/_history",
    ]


def test_an_admin_reads_searches_and_pages_through_history(app: FastAPI, events: dict[str, str]) -> None:
    client = AsgiClient(app, "a-token")
    replay = events["replay"]

    for url in routes(replay):
        assert client.get(url).status_code == 200, url
    assert client.get(f"/fhir/AuditEvent/{replay}").json()["agent"][0]["who"]["display"] == "otto"
    assert matches(client.get("/fhir/AuditEvent").json()) == set(events.values())
    assert matches(client.get("/fhir/AuditEvent?subtype=urn:hl7gw:operator-action|discard").json()) == {
        events["discard"]
    }
    assert matches(client.get("/fhir/AuditEvent?altid=otto&outcome=0").json()) == {replay}
    letter = f"{ENTITY_SYSTEMS['dead-letter']}|6"
    assert matches(client.get("/fhir/AuditEvent", params={"entity-identifier": letter}).json()) == {events["discard"]}
    assert matches(client.get("/fhir/AuditEvent?date=ge2020-01-01&_sort=-date").json()) == set(events.values())


def test_the_legacy_admin_token_reads_the_trail_too(app: FastAPI, events: dict[str, str]) -> None:
    assert AsgiClient(app, "legacy-admin").get(f"/fhir/AuditEvent/{events['discard']}").status_code == 200


@pytest.mark.parametrize("token", FORBIDDEN_TO)
def test_readers_and_operators_get_403_on_every_audit_route(app: FastAPI, events: dict[str, str], token: str) -> None:
    client = AsgiClient(app, token)

    for url in [*routes(events["replay"]), "/fhir/AuditEvent/unknown-id"]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert response.json()["issue"][0]["code"] == "forbidden"
        assert "needs the admin role" in response.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient").status_code == 200  # the rest of the store stays readable


def test_without_a_token_the_trail_is_401(app: FastAPI, events: dict[str, str]) -> None:
    for url in routes(events["replay"]):
        assert AsgiClient(app).get(url).status_code == 401, url


@pytest.mark.parametrize("token", FORBIDDEN_TO)
def test_audit_events_are_not_included_into_other_searches(app: FastAPI, events: dict[str, str], token: str) -> None:
    # A Provenance may target any type: one that names an AuditEvent would include it in a search.
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1")),
            put(
                {
                    "resourceType": "Provenance",
                    "id": "prov1",
                    "target": [{"reference": "Patient/p1"}, {"reference": f"AuditEvent/{events['replay']}"}],
                    "recorded": "2024-01-01T00:00:00Z",
                    "agent": [{"who": {"display": "hl7gw"}}],
                }
            ),
        )
    )
    url = "/fhir/Provenance?_include=Provenance:target"

    assert sorted(included_types(AsgiClient(app, "a-token").get(url).json())) == ["AuditEvent", "Patient"]
    assert included_types(AsgiClient(app, token).get(url).json()) == ["Patient"]
    revinclude = AsgiClient(app, token).get("/fhir/Patient?_revinclude=AuditEvent:entity")
    assert revinclude.status_code == 403
    assert AsgiClient(app, "a-token").get("/fhir/Patient?_revinclude=AuditEvent:entity").status_code == 200


def test_the_capability_statement_lists_audit_event_search_parameters(app: FastAPI) -> None:
    statement = AsgiClient(app).get("/fhir/metadata").json()
    (audit,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]

    assert "admin role" in audit["documentation"]
    assert "AuditEvent: the admin role only" in statement["rest"][0]["security"]["description"]
    names = {param["name"] for param in audit["searchParam"]}
    assert {"date", "subtype", "action", "outcome", "altid", "agent-name", "entity", "entity-identifier"} <= names
