"""The FHIR API with bearer JWTs of a real authorization server on a local port: roles from scopes,
SMART v2 read scopes (types, the patient's compartment), static tokens beside them, the answers to
bad tokens and to an unreachable server, and the SMART configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.audit_relay import AuditRelay
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.oidc_server import AUDIENCE, OidcServer, rsa_key

TOKENS = "ann:r-token:reader,ada:a-token:admin"
PATIENT_SCOPES = "launch/patient openid patient/*.rs"


@pytest.fixture
def idp() -> Iterator[OidcServer]:
    server = OidcServer([rsa_key("k1")])
    yield server
    server.stop()


@pytest.fixture
def app(tmp_path: Path, engine: Engine, idp: OidcServer) -> FastAPI:
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS, oidc_issuer=idp.issuer, oidc_audience=AUDIENCE)
    app = create_app(settings, engine)
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1")),
            put(patient("p2", "MRN2")),
            put(observation("o1", "p1", performer=[{"reference": "Practitioner/dr1"}])),
            put(observation("o2", "p2")),
            put({**condition, "code": {"text": "asthma"}}),
            put({"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Who"}]}),
        )
    )
    return app


@pytest.fixture
def bare_app(tmp_path: Path, idp: OidcServer) -> FastAPI:
    """The API on an empty SQLite store, for what involves no stored resource."""
    settings = load_settings(data_dir=tmp_path, api_tokens=TOKENS, oidc_issuer=idp.issuer, oidc_audience=AUDIENCE)
    return create_app(settings)


def get(app: FastAPI, url: str, token: str, **kwargs: Any) -> httpx.Response:
    return AsgiClient(app, token).get(url, **kwargs)


def ids(response: httpx.Response, mode: str = "match") -> list[str]:
    assert response.status_code == 200, response.text
    entries = response.json().get("entry", [])
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in entries
        if e.get("search", {}).get("mode") == mode
    )


def test_a_system_scope_reads_and_searches_everything(app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope="system/*.rs")
    assert ids(get(app, "/fhir/Patient", token)) == ["Patient/p1", "Patient/p2"]
    assert get(app, "/fhir/Observation/o2", token).status_code == 200
    assert get(app, "/fhir/_history", token).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [{"exp": 1}, {"aud": "https://elsewhere/fhir"}, {"iss": "https://evil.example.org"}, {"key": "forged"}],
)
def test_bad_tokens_are_401_invalid_token_and_say_nothing_more(
    bare_app: FastAPI, idp: OidcServer, claims: dict[str, Any]
) -> None:
    claims = dict(claims)  # the parameter is shared by both databases' runs
    key = rsa_key("k1", seed="forged") if claims.pop("key", None) else None
    response = get(bare_app, "/fhir/Patient", idp.token(key, scope="system/*.rs", **claims))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["issue"][0] == {
        "severity": "error",
        "code": "login",
        "diagnostics": "the bearer token is not valid",
    }


def test_a_rotated_key_works_after_the_refetch(bare_app: FastAPI, idp: OidcServer) -> None:
    assert get(bare_app, "/fhir/Patient", idp.token(scope="system/*.rs")).status_code == 200
    new = rsa_key("k-new", seed="rotated")
    idp.published = [new]
    bare_app.state.authorization_server.clock = lambda: 10**9  # past the refetch interval, no sleep
    assert get(bare_app, "/fhir/Patient", idp.token(new, scope="system/*.rs")).status_code == 200


def test_an_unreachable_server_without_cached_keys_is_503_not_a_crash(bare_app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope="system/*.rs")
    idp.stop()
    response = get(bare_app, "/fhir/Patient", token)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["issue"][0]["code"] == "transient"
    assert get(bare_app, "/fhir/Patient", "r-token").status_code == 200  # static tokens need no server


def test_static_tokens_still_work_and_unknown_ones_are_401(app: FastAPI, idp: OidcServer) -> None:
    assert get(app, "/fhir/Patient", "r-token").status_code == 200
    assert get(app, "/admin/dead-letters", "a-token").status_code == 200
    assert get(app, "/fhir/Patient", "aaa.bbb.ccc").status_code == 401  # JWT-shaped, neither kind


def test_role_scopes_and_smart_scopes_give_roles(app: FastAPI, idp: OidcServer) -> None:
    reader = idp.token(scope="user/*.rs")
    assert get(app, "/fhir/Observation", reader).status_code == 200
    assert get(app, "/admin/dead-letters", reader).status_code == 403
    assert AsgiClient(app, reader).request("POST", "/fhir/Subscription", json={}).status_code == 403
    assert get(app, "/metrics", reader).status_code == 403
    assert get(app, "/admin/dead-letters", idp.token(scope="hl7gw/admin")).status_code == 200
    nothing = get(app, "/fhir/Patient", idp.token(scope="openid patient/*.cud"))
    assert nothing.status_code == 403
    assert nothing.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


def test_a_patient_scope_sees_only_its_patients_compartment(app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope=PATIENT_SCOPES, patient="p1")
    assert get(app, "/fhir/Patient/p1", token).status_code == 200
    assert get(app, "/fhir/Patient/p1/_history/1", token).status_code == 200
    assert get(app, "/fhir/Observation/o1", token).status_code == 200
    for outside in ("/fhir/Patient/p2", "/fhir/Observation/o2", "/fhir/Observation/o2/_history/1", "/fhir/Patient/p9"):
        response = get(app, outside, token)
        assert response.status_code == 404, outside  # as if unknown: existence is not revealed
    assert get(app, "/fhir/Observation/o2/_history", token).status_code == 404
    assert len(get(app, "/fhir/Patient/p1/_history", token).json()["entry"]) == 1
    assert ids(get(app, "/fhir/Patient", token)) == ["Patient/p1"]
    assert ids(get(app, "/fhir/Observation", token)) == ["Observation/o1"]
    assert ids(get(app, "/fhir/Observation?subject=Patient/p2", token)) == []
    assert ids(get(app, "/fhir/Condition?_total=accurate", token)) == ["Condition/c1"]
    assert get(app, "/fhir/Observation?_summary=count", token).json()["total"] == 1
    # An include reaching outside the compartment (the performing Practitioner) is left out.
    included = get(app, "/fhir/Observation?_include=Observation:performer&_include=Observation:subject", token)
    assert ids(included, "include") == ["Patient/p1"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    posted = AsgiClient(app, token).request("POST", "/fhir/Observation/_search", content="code=8867-4", headers=form)
    assert ids(posted) == ["Observation/o1"]


def test_everything_keeps_to_what_the_scopes_allow(app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope=PATIENT_SCOPES, patient="p1")
    record = get(app, "/fhir/Patient/p1/$everything", token)
    assert ids(record) == ["Condition/c1", "Observation/o1", "Patient/p1"]
    assert ids(record, "include") == []  # the performing Practitioner is outside the compartment
    assert "total" not in record.json()
    assert ids(get(app, "/fhir/Patient/p1/$everything", "r-token"), "include") == ["Practitioner/dr1"]
    for other in ("/fhir/Patient/p2/$everything", "/fhir/Patient/p9/$everything"):
        assert get(app, other, token).status_code == 404, other  # another patient's record is unknown to it
    observations_only = idp.token(scope="patient/Observation.rs", patient="p1")
    assert get(app, "/fhir/Patient/p1/$everything", observations_only).status_code == 403
    readers = idp.token(scope="user/Patient.rs user/Observation.rs")
    assert ids(get(app, "/fhir/Patient/p2/$everything", readers)) == ["Observation/o2", "Patient/p2"]


def test_what_a_compartment_cannot_bound_is_403_for_a_patient_scope(app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope=PATIENT_SCOPES, patient="p1")
    for url in ("/fhir/Practitioner/dr1", "/fhir/Practitioner", "/fhir/_history", "/fhir?_type=Patient"):
        assert get(app, url, token).status_code == 403, url
    assert get(app, "/fhir/Observation/_history", token).status_code == 403
    export = get(app, "/fhir/$export", token, headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
    assert export.status_code == 403
    assert export.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


def test_a_patient_scope_without_a_patient_claim_is_403(app: FastAPI, idp: OidcServer) -> None:
    response = get(app, "/fhir/Observation", idp.token(scope="patient/*.rs"))
    assert response.status_code == 403
    assert "patient claim" in response.json()["issue"][0]["diagnostics"]


def test_type_specific_scopes_allow_only_their_types(app: FastAPI, idp: OidcServer) -> None:
    token = idp.token(scope="patient/Observation.rs", patient="p1")
    assert ids(get(app, "/fhir/Observation", token)) == ["Observation/o1"]
    assert get(app, "/fhir/Condition", token).status_code == 403
    assert get(app, "/fhir/Patient/p1", token).status_code == 403
    # A chain through a type the scopes leave out is refused; an include of one is left out.
    assert get(app, "/fhir/Observation?subject:Patient.identifier=MRN1", token).status_code == 403
    assert ids(get(app, "/fhir/Observation?_include=Observation:subject", token), "include") == []
    assert ids(get(app, "/fhir/Observation?_include=Observation:subject", "r-token"), "include") == [
        "Patient/p1",
        "Patient/p2",
    ]
    everyone = idp.token(scope="user/Observation.rs")
    assert ids(get(app, "/fhir/Observation", everyone)) == ["Observation/o1", "Observation/o2"]
    assert get(app, "/fhir?_type=Observation", everyone).status_code == 200
    assert get(app, "/fhir?_type=Observation,Patient", everyone).status_code == 403


def test_read_and_search_permissions_are_apart(app: FastAPI, idp: OidcServer) -> None:
    read_only = idp.token(scope="patient/*.r", patient="p1")
    assert get(app, "/fhir/Observation/o1", read_only).status_code == 200
    assert get(app, "/fhir/Observation", read_only).status_code == 403
    search_only = idp.token(scope="patient/*.s", patient="p1")
    assert ids(get(app, "/fhir/Observation", search_only)) == ["Observation/o1"]
    assert get(app, "/fhir/Observation/o1", search_only).status_code == 403


def test_the_audit_trail_names_the_tokens_subject(app: FastAPI, idp: OidcServer) -> None:
    assert get(app, "/fhir/Patient/p1", idp.token(scope="system/*.rs", sub="lab-app-7")).status_code == 200
    trail: AuditRelay = app.state.audit_trail
    assert trail.flush()
    events = ResourceStore(app.state.engine).search("AuditEvent", {})
    assert [agent["who"]["display"] for event in events for agent in event["agent"][:1]] == ["oidc:lab-app-7"]


def test_the_smart_configuration_comes_from_the_servers_discovery(bare_app: FastAPI, idp: OidcServer) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        response = AsgiClient(bare_app).get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        document = response.json()
        assert document["issuer"] == idp.issuer
        assert document["jwks_uri"] == f"{idp.issuer}/jwks"
        assert document["authorization_endpoint"] == f"{idp.issuer}/authorize"
        assert document["token_endpoint"] == f"{idp.issuer}/token"
        assert document["grant_types_supported"] == ["authorization_code", "client_credentials"]
        assert document["code_challenge_methods_supported"] == ["S256"]  # never plain
        assert {"openid", "launch/patient", "patient/*.rs", "system/*.rs", "hl7gw/admin"} <= set(
            document["scopes_supported"]
        )
        assert document["capabilities"] == [
            "permission-v1",
            "permission-v2",
            "permission-patient",
            "permission-user",
            "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "sso-openid-connect",
        ]


def test_the_capability_statement_names_smart_and_its_endpoints(bare_app: FastAPI, idp: OidcServer) -> None:
    security = AsgiClient(bare_app).get("/fhir/metadata").json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {part["url"]: part["valueUri"] for part in security["extension"][0]["extension"]}
    assert uris == {"token": f"{idp.issuer}/token", "authorize": f"{idp.issuer}/authorize"}


def test_without_an_issuer_there_is_no_smart_configuration(tmp_path: Path, engine: Engine) -> None:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS), engine)
    assert AsgiClient(app).get("/.well-known/smart-configuration").status_code == 404
    assert AsgiClient(app).get("/fhir/.well-known/smart-configuration").status_code == 404
    assert "service" not in AsgiClient(app).get("/fhir/metadata").json()["rest"][0]["security"]
