"""``Patient/[id]/$everything`` through the API: plain httpx (in-process), fhirpy and fhirclient over HTTP.

One Patient's record: itself, its compartment (a Patient linking to it, an Observation it performed
too), what those reference outside any compartment, never another Patient's data; ``_since``,
``_type``, ``_count`` paging through every page under writes, ``_summary``/``_elements``, POST,
HEAD, errors, the audit trail kept from readers, and the access audit of each answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI
from fhirclient import client as smart_client
from fhirclient._utils import iter_pages
from fhirclient.models.bundle import Bundle as SmartBundle
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.access_events import Interaction
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import access_audit_event, delete, observation, patient, put, transaction
from tests.support.server_thread import ServerThread

READER, ADMIN = "reader-token", "admin-token"
TOKENS = f"{READER}:reader,{ADMIN}:admin"
URL = "/fhir/Patient/p1/$everything"
OBSERVATIONS = [f"Observation/o{n:02d}" for n in range(1, 11)]
#: p1's record as a reader sees it: the Patient, its compartment, and what they reference one hop out.
MATCHES = sorted(
    [
        "Patient/p1",
        "Patient/p1-alias",  # links to p1 (Patient.link): in p1's compartment
        "Observation/shared",  # p2's Observation that p1 performed: in p1's compartment too
        "Encounter/e1",
        "Coverage/cov1",
        "Provenance/prov1",
        *OBSERVATIONS,
    ]
)
INCLUDED = ["Location/loc1", "Organization/org1", "Practitioner/dr1", "Practitioner/dr2"]


def _records() -> list[dict[str, Any]]:
    reference = lambda kind, rid: {"reference": f"{kind}/{rid}"}  # noqa: E731
    observations = [observation(key.partition("/")[2], "p1") for key in OBSERVATIONS]
    observations[0]["performer"] = [reference("Practitioner", "dr2")]
    return [
        {"resourceType": "Organization", "id": "org1", "name": "General Hospital"},
        *({"resourceType": "Practitioner", "id": f"dr{n}", "name": [{"family": f"Doc{n}"}]} for n in (1, 2, 3)),
        {"resourceType": "Location", "id": "loc1", "name": "Ward 1"},
        {
            **patient("p1", "MRN1"),
            "generalPractitioner": [reference("Practitioner", "dr1")],
            "managingOrganization": reference("Organization", "org1"),
        },
        {**patient("p1-alias", "MRN1-OLD"), "link": [{"other": reference("Patient", "p1"), "type": "seealso"}]},
        patient("p2", "MRN2"),
        *observations,
        observation("shared", "p2", performer=[reference("Patient", "p1")]),
        observation("theirs", "p2", performer=[reference("Practitioner", "dr3")]),
        observation("gone", "p1"),
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "IMP"},
            "subject": reference("Patient", "p1"),
            "location": [{"location": reference("Location", "loc1")}],
        },
        {
            "resourceType": "Coverage",
            "id": "cov1",
            "status": "active",
            "beneficiary": reference("Patient", "p1"),
            "payor": [reference("Organization", "org1")],
        },
        {
            "resourceType": "Provenance",
            "id": "prov1",
            "recorded": "2024-01-01T08:00:01Z",
            "target": [reference("Patient", "p1")],
            "agent": [{"who": {"display": "hl7gw"}}],
        },
        access_audit_event("a1", "p1"),
        patient("p-gone", "MRN9"),
    ]


def make_app(tmp_path: Path, engine: Engine, access_audit: bool = False) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS, access_audit=access_audit), engine)
    store: ResourceStore = app.state.store
    store.apply_bundle(transaction(*(put(resource) for resource in _records())))
    store.apply_bundle(transaction(delete("Observation", "gone"), delete("Patient", "p-gone")))
    return app


@pytest.fixture
def app(engine: Engine, tmp_path: Path) -> FastAPI:
    return make_app(tmp_path, engine)


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token=READER)


def keys(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    entries = bundle.get("entry", [])
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries if e["search"]["mode"] == mode]


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def refused(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    issue = response.json()["issue"][0]
    assert issue["code"] == code and words in issue["diagnostics"], issue


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((item["url"] for item in bundle["link"] if item["relation"] == relation), None)


def pages(client: AsgiClient, url: str, token: str = READER) -> Iterator[dict[str, Any]]:
    following: str | None = url
    while following:
        bundle = ok(client.get(following, token=token))
        yield bundle
        following = link(bundle, "next")


def test_the_patient_its_compartment_and_what_they_reference(client: AsgiClient) -> None:
    bundle = ok(client.get(URL))
    assert keys(bundle) == MATCHES  # in (type, id) order; neither p2, its Observation, nor deleted ones
    assert keys(bundle, "include") == INCLUDED  # not dr3 (only p2's Observation names it), not Patient/p2
    assert link(bundle, "next") is None and link(bundle, "self") == f"http://testserver{URL}"
    full = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["fullUrl"] for e in bundle["entry"]}
    assert full["Patient/p1"] == "http://testserver/fhir/Patient/p1"


def test_the_audit_trail_is_for_admins_only(client: AsgiClient) -> None:
    assert "AuditEvent/a1" not in keys(ok(client.get(URL)))
    assert keys(ok(client.get(URL, token=ADMIN))) == sorted([*MATCHES, "AuditEvent/a1"])
    refused(client.get(f"{URL}?_type=AuditEvent"), 403, "forbidden", "admin")
    assert keys(ok(client.get(f"{URL}?_type=AuditEvent", token=ADMIN))) == ["AuditEvent/a1"]


def test_type_picks_matches_and_included_alike(client: AsgiClient) -> None:
    bundle = ok(client.get(f"{URL}?_type=Encounter,Practitioner&_type=Patient"))
    assert keys(bundle) == ["Encounter/e1", "Patient/p1", "Patient/p1-alias"]
    assert keys(bundle, "include") == ["Practitioner/dr1"]  # the Patient's; org1 and loc1 are not asked for
    assert keys(ok(client.get(f"{URL}?_type=Observation"))) == sorted([*OBSERVATIONS, "Observation/shared"])
    assert "entry" not in ok(client.get(f"{URL}?_type=MessageHeader"))  # a stored type, none of p1


def test_since_keeps_what_changed_at_or_after_it(app: FastAPI, client: AsgiClient) -> None:
    before = _by_key(ok(client.get(f"{URL}?_count=100", token=ADMIN)))
    store: ResourceStore = app.state.store
    store.apply_bundle(transaction(put(observation("o03", "p1", status="amended")), put(observation("o99", "p1"))))
    changed = _by_key(ok(client.get(f"{URL}?_count=100", token=ADMIN)))
    since = changed["Observation/o99"]["meta"]["lastUpdated"]
    bundle = ok(client.get(URL, params={"_since": since}))
    expected = sorted(
        key for key, r in changed.items() if r["meta"]["lastUpdated"] >= since and "AuditEvent" not in key
    )
    assert sorted([*keys(bundle), *keys(bundle, "include")]) == expected
    assert {"Observation/o03", "Observation/o99"} <= set(keys(bundle))
    assert before["Observation/o03"]["meta"]["versionId"] == "1" and changed["Observation/o03"]["status"] == "amended"
    later = "2999-01-01T00:00:00Z"
    assert "entry" not in ok(client.get(URL, params={"_since": later}))


def _by_key(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}


@pytest.mark.parametrize("count", [1, 4, 7])
def test_paging_through_every_page_misses_nothing_and_repeats_nothing(client: AsgiClient, count: int) -> None:
    walked = list(pages(client, f"{URL}?_count={count}"))
    matches = [key for bundle in walked for key in keys(bundle)]
    assert matches == MATCHES  # each once, in order
    assert all(len(keys(bundle)) == count for bundle in walked[:-1]) and len(walked) == -(-len(MATCHES) // count)
    included = {key for bundle in walked for key in keys(bundle, "include")}
    assert included == set(INCLUDED)
    for bundle in walked:  # a page includes only what its own matches reference
        page = set(keys(bundle))
        if "Encounter/e1" not in page:
            assert "Location/loc1" not in keys(bundle, "include")


def test_pages_stay_stable_while_resources_are_written(app: FastAPI, client: AsgiClient) -> None:
    first = ok(client.get(f"{URL}?_count=4"))
    assert keys(first) == MATCHES[:4]
    store: ResourceStore = app.state.store
    # One sorts before the page boundary, one after; an existing one changes.
    store.apply_bundle(
        transaction(
            put(observation("a-before", "p1")), put(observation("zz-after", "p1")), put(observation("o05", "p1"))
        )
    )
    rest = [key for bundle in pages(client, link(first, "next") or "") for key in keys(bundle)]
    following = MATCHES[4:]
    following.insert(following.index("Observation/shared") + 1, "Observation/zz-after")
    assert rest == following


def test_a_page_costs_the_same_few_queries_whatever_its_size(app: FastAPI, client: AsgiClient) -> None:
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine: Engine = app.state.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        ok(client.get(f"{URL}?_count=2"))
        small = len(statements)
        statements.clear()
        ok(client.get(f"{URL}?_count=100"))
        large = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert small == large <= 4  # the Patient's read, the page, its references, the referenced resources


def test_summary_and_elements_apply_to_every_entry(client: AsgiClient) -> None:
    counted = ok(client.get(f"{URL}?_summary=count"))
    assert counted["total"] == len(MATCHES) and "entry" not in counted
    bundle = ok(client.get(URL, params={"_elements": "gender,Observation.status"}))
    resources = _by_key(bundle)
    assert set(resources["Patient/p1"]) == {"resourceType", "id", "meta"}  # it has no gender
    assert set(resources["Observation/o01"]) == {"resourceType", "id", "meta", "status", "code"}
    assert any(tag["code"] == "SUBSETTED" for tag in resources["Observation/o01"]["meta"]["tag"])
    assert "name" in resources["Practitioner/dr1"]  # no names for its type: whole
    summarized = _by_key(ok(client.get(f"{URL}?_summary=true")))
    assert "text" not in summarized["Encounter/e1"] and summarized["Encounter/e1"]["status"] == "finished"
    refused(client.get(f"{URL}?_summary=maybe"), 400, "invalid", "_summary")


def test_post_with_no_body_or_a_parameters_body(client: AsgiClient) -> None:
    assert keys(ok(client.request("POST", URL))) == MATCHES
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "_type", "valueString": "Encounter,Location"}, {"name": "_count", "valueInteger": 5}],
    }
    bundle = ok(client.request("POST", URL, json=parameters))
    assert keys(bundle) == ["Encounter/e1"] and keys(bundle, "include") == ["Location/loc1"]
    assert "_type=Encounter%2CLocation" in (link(bundle, "self") or "")  # the links are GET URLs of the same request
    refused(client.request("POST", URL, content=b"{not json"), 400, "invalid", "not JSON")
    refused(client.request("POST", URL, json={"resourceType": "Patient"}), 400, "invalid", "Parameters")
    refused(client.request("POST", URL, json={"resourceType": "Parameters", "parameter": 3}), 400, "invalid", "list")


@pytest.mark.parametrize(
    ("url", "status", "code", "words"),
    [
        ("/fhir/Patient/nobody/$everything", 404, "not-found", "is not known"),
        ("/fhir/Patient/p-gone/$everything", 410, "deleted", "was deleted"),
        ("/fhir/Patient/bad_id/$everything", 400, "invalid", "resource id"),
        (f"{URL}?start=2024-01-01", 400, "not-supported", "'start'"),
        (f"{URL}?_since=yesterday", 400, "invalid", "_since"),
        (f"{URL}?_count=many", 400, "invalid", "_count"),
        (f"{URL}?_type=Nonsense", 400, "not-supported", "Nonsense"),
        (f"{URL}?_type=,", 400, "invalid", "no resource type"),
        (f"{URL}?_cursor=garbage", 400, "invalid", "_cursor"),
    ],
)
def test_bad_requests_get_clear_answers(client: AsgiClient, url: str, status: int, code: str, words: str) -> None:
    refused(client.get(url), status, code, words)


def test_a_cursor_belongs_to_its_request_and_lenient_handling_drops_unknown_parameters(client: AsgiClient) -> None:
    following = link(ok(client.get(f"{URL}?_count=2")), "next") or ""
    cursor = following.partition("_cursor=")[2]
    refused(client.get(f"{URL}?_count=2&_type=Observation&_cursor={cursor}"), 400, "invalid", "different search")
    refused(client.get("/fhir/Patient/p2/$everything", params={"_cursor": cursor}), 400, "invalid", "different")
    lenient = ok(client.get(f"{URL}?start=2024-01-01&_type=Encounter", headers={"Prefer": "handling=lenient"}))
    assert keys(lenient) == ["Encounter/e1"] and "start" not in (link(lenient, "self") or "")


def test_head_answers_like_get_without_a_body(client: AsgiClient) -> None:
    got, head = client.get(URL), client.request("HEAD", URL)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert client.request("HEAD", "/fhir/Patient/nobody/$everything").status_code == 404
    assert client.get(URL, token="").status_code == 401


def test_the_capability_statement_names_the_operation(client: AsgiClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    everything = next(op for op in patient_entry["operation"] if op["name"] == "everything")
    assert everything["definition"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"


def test_each_answer_is_audited_as_a_read_of_the_patient(engine: Engine, tmp_path: Path) -> None:
    app = make_app(tmp_path, engine, access_audit=True)
    client = AsgiClient(app, token=READER)
    ok(client.get(URL))
    client.request("HEAD", URL)  # carries nothing: not recorded
    ok(client.get(f"{URL}?_type=MessageHeader"))  # nothing returned: not recorded
    assert app.state.audit_trail.flush()
    events = [e for e in ResourceStore(engine).search("AuditEvent", {"_count": ["100"]}) if e["id"] != "a1"]
    assert len(events) == 1
    (audit,) = events
    assert [(s["system"], s["code"]) for s in audit["subtype"]] == [
        ("http://hl7.org/fhir/restful-interaction", Interaction.operation.value),
        ("http://hl7.org/fhir/OperationDefinition", "Patient-everything"),
    ]
    assert audit["action"] == "R"
    patients = sorted(e["what"]["reference"] for e in audit["entity"] if e.get("role", {}).get("code") == "1")
    assert patients == ["Patient/p1", "Patient/p1-alias", "Patient/p2"]  # Observation/shared's subject is p2
    read = [e["what"]["reference"] for e in audit["entity"] if e.get("role", {}).get("code") == "4"]
    assert read == ["Patient/p1"]


# Real clients over HTTP


@pytest.fixture
def served(app: FastAPI) -> Iterator[str]:
    with ServerThread(app) as server:
        yield f"http://127.0.0.1:{server.port}/fhir"


def test_fhirpy_runs_the_operation_and_pages(served: str) -> None:
    client = SyncFHIRClient(served, authorization=f"Bearer {READER}")
    bundle = client.reference("Patient", "p1").execute("$everything", method="get", params={"_count": 6})
    seen = keys(bundle)
    while following := link(bundle, "next"):
        path, _, query = following.removeprefix(served + "/").partition("?")
        bundle = client.execute(path, method="get", params=dict(parse_qsl(query)))
        seen += keys(bundle)
    assert seen == MATCHES
    posted = client.reference("Patient", "p1").execute("$everything", data={"resourceType": "Parameters"})
    assert keys(posted) == MATCHES
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "nobody").execute("$everything", method="get")


def test_fhirclient_reads_every_page(served: str) -> None:
    smart = smart_client.FHIRClient(settings={"app_id": "hl7gw-tests", "api_base": served + "/"})
    smart.server.session.headers["Authorization"] = f"Bearer {READER}"
    first = SmartBundle.read_from("Patient/p1/$everything?_count=5", smart.server)
    walked = list(iter_pages(first, smart.server))
    matches = [
        f"{e.resource.resource_type}/{e.resource.id}" for b in walked for e in b.entry if e.search.mode == "match"
    ]
    assert matches == MATCHES and len(walked) == 4
    patient_entry = next(e.resource for b in walked for e in b.entry if e.resource.id == "p1")
    assert patient_entry.generalPractitioner[0].reference == "Practitioner/dr1"
