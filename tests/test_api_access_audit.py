"""The access audit trail through the FHIR API: every read and search that returns patient data is a
BALP AuditEvent naming the token and the Patients; failed authentications are recorded without the token."""

from __future__ import annotations

import asyncio
import base64
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.services.embedded_redis import free_port
from gateway.store.audit_relay import AuditRelay
from gateway.store.resources import ResourceStore
from gateway.validate import validate_bundle
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.gateway_process import clean_env

TOKENS = "ann:r-token:reader,ada:a-token:admin"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
PRESENTED = "Sup3r-Secret-Token-Value"  # what a caller presents: must never be stored


def make_app(tmp_path: Path, engine: Engine, **settings: Any) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS, **settings), engine)
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1")),
            put(patient("p2", "MRN2")),
            put(observation("o1", "p1")),
            put(observation("o2", "p2", performer=[{"reference": "Patient/p1"}])),
            put({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}]}),
        )
    )
    return app


@pytest.fixture
def app(tmp_path: Path, engine: Engine) -> FastAPI:
    return make_app(tmp_path, engine)


def trail(app: FastAPI) -> AuditRelay:
    audit: AuditRelay = app.state.audit_trail
    assert audit.flush(), "the trail did not write its queue"
    return audit


def recorded(app: FastAPI, **params: str) -> list[dict[str, Any]]:
    """The AuditEvents written so far (after the writer flushed), oldest first."""
    trail(app)
    events = ResourceStore(app.state.engine).search("AuditEvent", {k.replace("_", "-"): [v] for k, v in params.items()})
    return sorted(events, key=lambda event: event["recorded"])


def of(events: list[dict[str, Any]], role: str) -> list[str]:
    """The references of the entities with object-role ``role`` (1 Patient, 4 Domain Resource)."""
    return sorted(
        e["what"]["reference"] for event in events for e in event["entity"] if e.get("role", {}).get("code") == role
    )


def subtype(event: dict[str, Any]) -> str:
    assert event["subtype"][0]["system"] == INTERACTION
    return str(event["subtype"][0]["code"])


def test_a_patient_read_is_one_balp_patient_read(app: FastAPI) -> None:
    assert AsgiClient(app, "r-token").get("/fhir/Patient/p1", headers={"X-Request-Id": "req-42"}).status_code == 200

    (event,) = recorded(app)
    validate_bundle(transaction(put(event)))  # a valid R4 AuditEvent
    assert event["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    assert event["type"]["code"] == "rest" and subtype(event) == "read"
    assert event["action"] == "R" and event["outcome"] == "0"
    user, client, server = event["agent"]
    assert user["who"]["display"] == user["altId"] == user["name"] == "ann" and user["requestor"] is True
    assert user["role"][0]["coding"][0]["code"] == "reader"
    assert client["type"]["coding"][0]["code"] == "110152" and client["network"]["type"] == "2"
    assert server["type"]["coding"][0]["code"] == "110153" and server["network"]["address"] == "http://testserver/fhir"
    assert event["source"]["observer"]["display"] == "hl7gw"
    assert of([event], "1") == ["Patient/p1"] and of([event], "4") == ["Patient/p1"]
    (request_id,) = [e for e in event["entity"] if e["type"]["code"] == "XrequestId"]
    assert request_id["what"]["identifier"]["value"] == "req-42"


def test_reads_of_other_resources_name_their_patients(app: FastAPI) -> None:
    client = AsgiClient(app, "r-token")
    for url in ("/fhir/Observation/o1", "/fhir/Observation/o2/_history/1", "/fhir/Observation/o2/_history"):
        assert client.get(url).status_code == 200, url

    by_subtype: dict[str, list[dict[str, Any]]] = {}
    for event in recorded(app):
        by_subtype.setdefault(subtype(event), []).append(event)
    read = by_subtype["read"]
    assert (of(read, "1"), of(read, "4")) == (["Patient/p1"], ["Observation/o1"])
    # o2's subject is p2 and its performer p1: one AuditEvent naming both (BALP Read rather than PatientRead).
    (vread,), (history,) = by_subtype["vread"], by_subtype["history-instance"]
    assert of([vread], "1") == of([history], "1") == ["Patient/p1", "Patient/p2"]
    assert of([vread], "4") == ["Observation/o2/_history/1"] and of([history], "4") == ["Observation/o2"]
    assert vread["meta"]["profile"][0].endswith("IHE.BasicAudit.Read")
    assert {event["action"] for event in recorded(app)} == {"R"}


def test_a_search_records_one_event_per_patient_with_the_query(app: FastAPI) -> None:
    url = "/fhir/Observation?code=http://loinc.org|8867-4&access_token=" + PRESENTED
    lenient = {"Prefer": "handling=lenient"}  # access_token is no search parameter
    assert len(AsgiClient(app, "r-token").get(url, headers=lenient).json()["entry"]) == 2

    (event,) = recorded(app)  # one answer, one AuditEvent naming every Patient in it
    assert of([event], "1") == ["Patient/p1", "Patient/p2"]
    validate_bundle(transaction(put(event)))
    assert subtype(event) == "search-type" and event["action"] == "E"
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.Query")  # PatientQuery names one Patient
    assert event["agent"][1]["type"]["coding"][0]["code"] == "110153"  # the client: the query's source
    (query,) = [e for e in event["entity"] if e["role"]["code"] == "24"]
    line = base64.b64decode(query["query"]).decode()
    assert line == query["description"] == "GET /fhir/Observation?code=http%3A%2F%2Floinc.org%7C8867-4"
    assert PRESENTED not in str(event)
    (one,) = [e["resource"] for e in AsgiClient(app, "a-token").get("/fhir/AuditEvent?patient=p2").json()["entry"]]
    assert one["id"] == event["id"]


def test_a_search_across_types_and_a_chained_search_are_recorded(app: FastAPI) -> None:
    client = AsgiClient(app, "r-token")
    assert len(client.get("/fhir?_type=Observation,Practitioner&_id=o1,dr1").json()["entry"]) == 2
    assert "entry" not in client.get("/fhir/Practitioner?_has:Observation:performer:_id=o2").json()
    assert len(client.get("/fhir/Observation?patient.identifier=MRN2").json()["entry"]) == 1

    across, chained = recorded(app)  # the _has search found nobody's data: not recorded
    assert subtype(across) == "search-system" and of([across], "1") == ["Patient/p1"]
    assert across["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")
    validate_bundle(transaction(put(across)))
    assert subtype(chained) == "search-type" and of([chained], "1") == ["Patient/p1", "Patient/p2"]  # o2.performer


def test_included_resources_count_too(app: FastAPI) -> None:
    client = AsgiClient(app, "r-token")
    assert client.get("/fhir/Practitioner?_revinclude=Observation:performer").json()["total"] == 1  # none names dr1
    included = client.get("/fhir/Patient?identifier=MRN2&_revinclude=Observation:performer").json()
    assert [e["resource"]["id"] for e in included["entry"]] == ["p2"]
    assert of(recorded(app), "1") == ["Patient/p2"]
    client.get("/fhir/Patient?identifier=MRN1&_revinclude=Observation:performer")  # o2: p2's, performed by p1
    assert of(recorded(app), "1") == ["Patient/p1", "Patient/p2", "Patient/p2"]


def test_nothing_is_recorded_without_patient_data(app: FastAPI) -> None:
    client = AsgiClient(app, "r-token")
    assert client.get("/fhir/metadata").status_code == 200
    assert client.get("/fhir/Practitioner").json()["total"] == 1
    assert client.get("/fhir/Practitioner/dr1").status_code == 200
    assert client.get("/fhir/Observation?code=nothing-like-it").json()["total"] == 0
    assert client.get("/fhir/Patient/unknown").status_code == 404
    assert client.get("/fhir/Patient?_summary=count").status_code == 200
    etag = client.get("/fhir/Patient/p1").headers["ETag"]
    assert client.get("/fhir/Patient/p1", headers={"If-None-Match": etag}).status_code == 304  # returns nothing

    (only,) = recorded(app)  # the one 200 read
    assert subtype(only) == "read"


def test_an_admin_searches_the_trail_by_patient_and_date_and_a_reader_may_not(app: FastAPI) -> None:
    reader, admin = AsgiClient(app, "r-token"), AsgiClient(app, "a-token")
    reader.get("/fhir/Patient/p1")
    reader.get("/fhir/Observation/o1")
    reader.get("/fhir/Patient/p2")
    trail(app)

    found = admin.get("/fhir/AuditEvent?patient=Patient/p1&date=ge2020-01-01&subtype=read").json()
    assert sorted(e["resource"]["entity"][-1]["what"]["reference"] for e in found["entry"]) == [
        "Observation/o1",
        "Patient/p1",
    ]
    assert admin.get("/fhir/AuditEvent?patient=p2&altid=ann").json()["total"] == 1
    assert admin.get("/fhir/AuditEvent?patient=p1&date=lt2020-01-01").json()["total"] == 0
    assert admin.get("/fhir/AuditEvent?entity=Observation/o1").json()["total"] == 1
    assert reader.get("/fhir/AuditEvent?patient=p1").status_code == 403

    # Reading the trail is recorded too, without Patients, so it never adds to a patient's trail.
    # (a search that found nothing is not)
    looks = recorded(app, altid="ada")
    assert len(looks) == 3 and {subtype(e) for e in looks} == {"search-type"}
    assert of(looks, "1") == []
    assert len(recorded(app, patient="p1")) == 2
    refused = recorded(app, type="110114")
    assert [(e["outcome"], e["agent"][0]["altId"]) for e in refused] == [("8", "ann")]


def test_failed_authentications_are_recorded_without_the_token(app: FastAPI, engine: Engine) -> None:
    anonymous = AsgiClient(app)
    assert anonymous.get("/fhir/Patient/p1").status_code == 401
    assert anonymous.get("/fhir/Patient?name=Doe", token=PRESENTED).status_code == 401
    assert anonymous.get("/fhir/AuditEvent", token="r-token").status_code == 403
    assert anonymous.get("/admin/dead-letters", token="r-token").status_code == 403

    events = recorded(app, type="http://dicom.nema.org/resources/ontology/DCM|110114")
    assert [(e["outcome"], e["agent"][0]["who"]["display"], e["entity"][0]["description"]) for e in events] == [
        ("4", "unknown", "GET /fhir/Patient/p1"),
        ("8", "unknown", "GET /fhir/Patient"),
        ("8", "ann", "GET /fhir/AuditEvent"),
        ("8", "ann", "GET /admin/dead-letters"),
    ]
    for event in events:
        validate_bundle(transaction(put(event)))
        assert event["subtype"][0]["code"] == "110122" and event["agent"][1]["network"]["address"] == "127.0.0.1"
    assert recorded(app, type="rest") == []  # nothing was read
    with engine.connect() as conn:  # not in any stored row, version or index value
        for table in ("fhir_resource", "fhir_resource_history", "fhir_search_token", "fhir_search_string"):
            rows = conn.exec_driver_sql(f"SELECT * FROM {table}").all()
            assert rows and not any(PRESENTED in str(row) or PRESENTED[:8] in str(row) for row in rows), table


def test_with_the_access_audit_off_only_refusals_are_recorded(tmp_path: Path, engine: Engine) -> None:
    app = make_app(tmp_path, engine, access_audit=False)
    assert AsgiClient(app, "r-token").get("/fhir/Patient/p1").status_code == 200
    assert AsgiClient(app, "wrong").get("/fhir/Patient/p1").status_code == 401

    (event,) = recorded(app)
    assert event["type"]["code"] == "110114"


def test_a_full_queue_refuses_the_read_rather_than_leave_it_unrecorded(app: FastAPI) -> None:
    audit: AuditRelay = app.state.audit_trail
    audit.capacity, audit.linger_s, audit.block_s = 1, 30.0, 0.05  # the writer holds on
    client = AsgiClient(app, "r-token")
    assert client.get("/fhir/Patient/p1").status_code == 200
    refused = client.get("/fhir/Patient/p2")

    assert refused.status_code == 503 and refused.json()["issue"][0]["code"] == "transient"
    assert "Jane" not in refused.text
    assert (audit.pending, audit.dropped) == (1, 1)
    audit.close()  # the shutdown drain writes what was queued
    assert audit.written == 1 and audit.pending == 0
    assert len(ResourceStore(app.state.engine).search("AuditEvent", {})) == 1


def test_the_lifespan_starts_the_trail_and_its_shutdown_drains_it(app: FastAPI) -> None:
    audit: AuditRelay = app.state.audit_trail
    audit.linger_s = 60.0  # nothing would be written for a minute but for the drain

    async def serve() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                for url in ("/fhir/Patient/p1", "/fhir/Observation?subject=Patient/p2"):
                    answer = await client.get(url, headers={"Authorization": "Bearer r-token"})
                    assert answer.status_code == 200
            assert audit.pending == 2 and audit.written == 0

    asyncio.run(serve())
    assert audit.pending == 0 and audit.written == 2 and audit.dropped == 0
    assert of(ResourceStore(app.state.engine).search("AuditEvent", {}), "1") == [
        "Patient/p1",
        "Patient/p1",
        "Patient/p2",
    ]


@pytest.mark.slow
def test_hl7gw_api_stopped_by_sigterm_leaves_every_read_recorded(tmp_path: Path, database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    ResourceStore(engine).apply_bundle(transaction(put(patient("p1", "MRN1"))))
    port = free_port()
    env = clean_env(
        HL7GW_DATA_DIR=str(tmp_path),
        HL7GW_DATABASE_URL=database_url,
        HL7GW_HTTP_PORT=str(port),
        HL7GW_API_TOKENS=TOKENS,
        HL7GW_LOG_LEVEL="WARNING",
    )
    api = subprocess.Popen([sys.executable, "-m", "gateway.cli", "api"], env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    client.get("/fhir/metadata")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            for _ in range(20):
                assert client.get("/fhir/Patient/p1", headers={"Authorization": "Bearer r-token"}).status_code == 200
            assert client.get("/fhir/Patient/p1", headers={"Authorization": "Bearer nope"}).status_code == 401
        api.send_signal(signal.SIGTERM)  # uvicorn's shutdown runs the lifespan's: the trail drains
        api.wait(30)
    finally:
        if api.poll() is None:
            api.kill()
    events = ResourceStore(engine).search("AuditEvent", {"_count": ["100"]})
    engine.dispose()
    assert sorted(event["type"]["code"] for event in events) == ["110114"] + ["rest"] * 20
