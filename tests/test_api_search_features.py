"""Issue 19's search features through the API with httpx: chains, _has, modifiers, quantities,
composites, _include=* and :iterate, GET [base]?_type=, errors as OperationOutcomes, and the audit
trail kept out of reach of lower roles. Every Bundle served is checked with fhir.resources (R4B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import access_audit_event, observation, patient, put, transaction

READER, ADMIN = "reader-token", "admin-token"
UCUM = "http://unitsofmeasure.org"


def heart_rate(resource_id: str, patient_id: str, value: int) -> dict[str, Any]:
    found = observation(resource_id, patient_id, valueQuantity={"value": value, "unit": "/min", "system": UCUM})
    found["valueQuantity"]["code"] = "/min"
    found["code"]["coding"][0]["display"] = "Heart rate"
    return found


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> FastAPI:
    settings = load_settings(data_dir=tmp_path, api_tokens=f"{READER}:reader,{ADMIN}:admin")
    app = create_app(settings, engine)
    organization = {"resourceType": "Organization", "id": "org1", "name": "General Hospital"}
    app.state.store.apply_bundle(
        transaction(
            put(organization),
            put({**patient("p1", "MRN1", family="Doe"), "managingOrganization": {"reference": "Organization/org1"}}),
            put(patient("p2", "MRN2", family="Roe", birthDate="1980-01-01")),
            put(heart_rate("o1", "p1", 72)),
            put(heart_rate("o2", "p2", 120)),
            put(access_audit_event("a1", "p1")),
        )
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token=READER)


def found(response: httpx.Response, mode: str = "match") -> list[str]:
    assert response.status_code == 200, response.text
    body = response.json()
    Bundle.model_validate(body)
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body.get("entry", [])
        if e["search"]["mode"] == mode
    )


def refused(response: httpx.Response, status: int, code: str, diagnostics: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    OperationOutcome.model_validate(body)
    assert body["issue"][0]["code"] == code and diagnostics in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Observation?patient.identifier=urn:oid:1.2.3.4|MRN1", ["Observation/o1"]),
        ("Observation?subject:Patient.name=roe", ["Observation/o2"]),
        ("Observation?patient.organization.name=general", ["Observation/o1"]),
        ("Patient?_has:Observation:patient:value-quantity=gt100", ["Patient/p2"]),
        ("Organization?_has:Patient:organization:_has:Observation:patient:code=8867-4", ["Organization/org1"]),
        ("Patient?birthdate:missing=true", ["Patient/p1"]),
        ("Observation?code:text=heart", ["Observation/o1", "Observation/o2"]),
        ("Observation?code:not=8867-4", []),
        ("Patient?family:exact=Doe", ["Patient/p1"]),
        ("Patient?family:contains=O", ["Patient/p1", "Patient/p2"]),
        ("Observation?patient:identifier=urn:oid:1.2.3.4|MRN2", ["Observation/o2"]),
        ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN1", []),
        ("Observation?value-quantity=72|http://unitsofmeasure.org|/min", ["Observation/o1"]),
        ("Observation?value-quantity=ap110", ["Observation/o2"]),
        ("Observation?code-value-quantity=http://loinc.org|8867-4$lt100", ["Observation/o1"]),
        ("Patient?_id=p1,p2&_lastUpdated=ge2000-01-01", ["Patient/p1", "Patient/p2"]),
    ],
)
def test_search_features(client: AsgiClient, query: str, expected: list[str]) -> None:
    assert found(client.get(f"/fhir/{query}")) == expected


def test_include_star_and_iterate(client: AsgiClient) -> None:
    star = client.get("/fhir/Observation", params={"_id": "o1", "_include": "*"})
    assert found(star, "include") == ["Patient/p1"]
    iterated = client.get(
        "/fhir/Observation", params={"_id": "o1", "_include": "Observation:patient", "_include:iterate": "Patient:*"}
    )
    assert found(iterated, "include") == ["Organization/org1", "Patient/p1"]
    reverse = [("_id", "org1"), ("_revinclude", "Patient:organization"), ("_revinclude:iterate", "Observation:subject")]
    assert found(client.get("/fhir/Organization", params=reverse), "include") == ["Observation/o1", "Patient/p1"]


def test_search_across_types(client: AsgiClient) -> None:
    response = client.get("/fhir", params={"_type": "Patient,Organization", "_lastUpdated": "gt2000"})
    assert found(response) == ["Organization/org1", "Patient/p1", "Patient/p2"]
    paged = client.get("/fhir", params={"_type": "Patient,Observation", "_count": "3"}).json()
    assert [e["resource"]["id"] for e in paged["entry"]] == ["o1", "o2", "p1"]
    following = next(link["url"] for link in paged["link"] if link["relation"] == "next")
    assert found(client.get(following)) == ["Patient/p2"]
    assert found(client.get("/fhir", params={"_id": "p1,o2,a1"})) == ["Observation/o2", "Patient/p1"]  # no AuditEvent
    admin = client.get("/fhir", params={"_id": "p1,a1"}, token=ADMIN)
    assert found(admin) == ["AuditEvent/a1", "Patient/p1"]
    refused(client.get("/fhir", params={"_type": "Foo"}), 400, "not-supported", "'Foo' is not supported")
    refused(client.get("/fhir", params={"family": "doe"}), 400, "not-supported", "a search across types takes only")
    lenient = client.get("/fhir", params={"_type": "Patient", "family": "x"}, headers={"Prefer": "handling=lenient"})
    assert found(lenient) == ["Patient/p1", "Patient/p2"]


@pytest.mark.parametrize(
    "query",
    [
        "/fhir/Patient?_has:AuditEvent:entity:type=110112",
        "/fhir/Provenance?target:AuditEvent.type=110112",
        "/fhir?_type=AuditEvent",
        "/fhir/Patient?_revinclude=AuditEvent:*",
    ],
)
def test_the_audit_trail_stays_admin_only_through_chains(client: AsgiClient, query: str) -> None:
    refused(client.get(query), 403, "forbidden", "admin role")
    assert client.get(query, token=ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("query", "code", "diagnostics"),
    [
        ("Observation?subject.name=x", "invalid", "is ambiguous: subject may refer to"),
        ("Observation?value-quantity=lots", "invalid", "is not a number"),
        ("Observation?code:below=x", "not-supported", "modifier :below is not supported"),
        ("Patient?family:not=x", "not-supported", "modifier :not is not supported on string parameter 'family'"),
        ("Patient?_has:Observation:code:code=x", "invalid", "no reference parameter 'code'"),
        ("Patient?gender:missing=perhaps", "invalid", "takes true or false"),
    ],
)
def test_bad_searches_are_400_outcomes(client: AsgiClient, query: str, code: str, diagnostics: str) -> None:
    refused(client.get(f"/fhir/{query}"), 400, code, diagnostics)


def test_unsupported_modifiers_are_dropped_under_lenient_handling(client: AsgiClient) -> None:
    response = client.get("/fhir/Observation?code:below=x&patient=p1", headers={"Prefer": "handling=lenient"})
    assert found(response) == ["Observation/o1"]
    assert "code%3Abelow" not in response.json()["link"][0]["url"]


def test_the_capability_statement_lists_the_features(client: AsgiClient) -> None:
    statement = client.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    assert rest["interaction"] == [{"code": "history-system"}, {"code": "search-system"}]
    assert {"_type", "_id", "_lastUpdated", "_tag", "_security"} <= {p["name"] for p in rest["searchParam"]}
    observation_type = next(r for r in rest["resource"] if r["type"] == "Observation")
    params = {p["name"]: p for p in observation_type["searchParam"]}
    assert params["value-quantity"]["type"] == "quantity" and "ap" in params["value-quantity"]["documentation"]
    assert params["code-value-quantity"]["type"] == "composite"
    assert ":text" in params["code"]["documentation"] and ":identifier" in params["subject"]["documentation"]
    assert observation_type["searchInclude"][0] == "*"
    assert "_has:" in rest["documentation"]
