"""What FHIR clients and browser apps expect of the API (issue 19): no empty arrays, _summary and
_elements on read and search, POST [type]/_search, HEAD, CORS, and discovery (definitions, ids)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.observation import Observation

from gateway import fhirjson
from gateway.api.app import create_app
from gateway.api.subsetting import SUBSETTED
from gateway.config import load_settings
from gateway.store.resources import ResourceStore
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import observation, patient, put, transaction

READER = "reader-token"
TOKENS = f"ann:{READER}:reader,ada:admin-token:admin"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane Doe</div>'}


def make_app(tmp_path: Path, **settings: Any) -> FastAPI:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=TOKENS, **settings))
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1", family="Doe", birthDate="1970-06-01", text=NARRATIVE, gender="female")),
            put(patient("p2", "MRN2", family="Roe", contact=[{"name": {"family": "Kin"}, "gender": "male"}])),
            put(
                observation(
                    "o1",
                    "p1",
                    effectiveDateTime="2020-01-01T10:00:00Z",
                    valueQuantity={"value": 72, "unit": "/min"},
                    note=[{"text": "resting"}],
                    component=[{"code": {"text": "part"}, "valueString": "x", "interpretation": [{"text": "N"}]}],
                )
            ),
        )
    )
    return app


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return make_app(tmp_path)


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token=READER)


def tags(resource: dict[str, Any]) -> list[str]:
    return [tag["code"] for tag in resource.get("meta", {}).get("tag", [])]


def ids(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


# 1. No empty arrays or objects


@pytest.mark.parametrize(
    "url", ["/fhir/Patient?family=nobody", "/fhir/Patient?_summary=count", "/fhir/Patient?_count=0"]
)
def test_an_answer_without_entries_has_no_entry_element(client: AsgiClient, url: str) -> None:
    response = client.get(url)

    assert response.status_code == 200
    assert b"[]" not in response.content and b"{}" not in response.content
    assert "entry" not in response.json()


def test_empty_elements_in_stored_data_are_not_served(app: FastAPI, client: AsgiClient) -> None:
    # Stored before the guard existed, or written by a sink that allowed them: never served as such.
    app.state.store.apply_bundle(
        transaction(put({"resourceType": "Patient", "id": "e1", "name": [{"given": [], "family": "X"}], "photo": []}))
    )
    for body in (client.get("/fhir/Patient/e1").content, client.get("/fhir/Patient?_id=e1").content):
        assert b"[]" not in body and b"{}" not in body and b"null" not in body
    assert client.get("/fhir/Patient/e1").json()["name"] == [{"family": "X"}]


def test_the_guard_keeps_nulls_that_align_primitive_arrays() -> None:
    value = {"given": ["A", None], "_given": [None, {"extension": [{"url": "u", "valueString": "v"}]}], "x": None}
    assert fhirjson.without_empty(value) == {"given": ["A", None], "_given": value["_given"]}
    assert fhirjson.without_empty({"a": [None, {}], "b": {"c": []}, "d": [[], {"e": {}}], "f": 0}) == {"f": 0}
    assert fhirjson.dumps_served({"a": [{}], "b": "[]"}) == b'{"b":"[]"}'  # text holding "[]" stays


# 2. _summary and _elements, the same on read and search


def test_summary_true_keeps_the_summary_elements_at_every_level(client: AsgiClient) -> None:
    read = client.get("/fhir/Observation/o1?_summary=true").json()
    searched = client.get("/fhir/Observation?_id=o1&_summary=true").json()["entry"][0]["resource"]

    assert read == searched
    assert tags(read) == ["SUBSETTED"] and read["meta"]["tag"] == [SUBSETTED]
    assert read["meta"]["versionId"] == "1"
    assert {"status", "code", "subject", "effectiveDateTime", "valueQuantity", "component"} <= set(read)
    assert "note" not in read  # Observation.note is not a summary element
    assert read["component"] == [{"code": {"text": "part"}, "valueString": "x"}]  # nor component.interpretation
    patient_summary = client.get("/fhir/Patient/p1?_summary=true").json()
    assert "text" not in patient_summary and patient_summary["birthDate"] == "1970-06-01"
    contact = client.get("/fhir/Patient/p2?_summary=true").json()
    assert "contact" not in contact  # Patient.contact is not a summary element


def test_summary_text_data_and_false(client: AsgiClient) -> None:
    text = client.get("/fhir/Patient/p1?_summary=text").json()
    assert set(text) == {"resourceType", "id", "meta", "text"} and tags(text) == ["SUBSETTED"]
    observation_text = client.get("/fhir/Observation/o1?_summary=text").json()
    assert set(observation_text) == {"resourceType", "id", "meta", "status", "code"}  # the mandatory ones
    data = client.get("/fhir/Patient?_id=p1&_summary=data").json()["entry"][0]["resource"]
    assert "text" not in data and data["name"][0]["family"] == "Doe" and tags(data) == ["SUBSETTED"]
    whole = client.get("/fhir/Patient/p1?_summary=false").json()
    assert whole == client.get("/fhir/Patient/p1").json() and "tag" not in whole["meta"]


def test_elements_on_read_and_search(client: AsgiClient) -> None:
    read = client.get("/fhir/Observation/o1?_elements=value,status").json()
    searched = client.get("/fhir/Observation?patient=p1&_elements=value,status").json()

    assert set(read) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}  # code is mandatory
    assert searched["entry"][0]["resource"] == read
    Observation.model_validate(read)
    assert tags(read) == ["SUBSETTED"]
    # Type-prefixed names, and included resources: only names given for their type subset them.
    included = client.get("/fhir/Observation?_id=o1&_include=Observation:patient&_elements=code,Patient.gender").json()
    by_type = {entry["resource"]["resourceType"]: entry["resource"] for entry in included["entry"]}
    assert set(by_type["Observation"]) == {"resourceType", "id", "meta", "code", "status"}
    assert set(by_type["Patient"]) == {"resourceType", "id", "meta", "gender"}
    # The next page keeps the subset (the links keep the parameters).
    paged = client.get("/fhir/Patient?_elements=name&_count=1").json()
    following = client.get(next(link["url"] for link in paged["link"] if link["relation"] == "next")).json()
    assert set(following["entry"][0]["resource"]) == {"resourceType", "id", "meta", "name"}


def test_elements_that_leave_out(client: AsgiClient) -> None:
    trimmed = client.get("/fhir/Observation/o1?_elements=-note,-component,-code").json()

    assert "note" not in trimmed and "component" not in trimmed
    assert trimmed["code"] and trimmed["valueQuantity"]["value"] == 72  # code is mandatory; the rest stays
    assert tags(trimmed) == ["SUBSETTED"]
    # fhirpy's .elements("note", "component", exclude=True) writes one '-' before the first name only.
    assert client.get("/fhir/Observation/o1?_elements=-note,component").json() == trimmed


def test_bad_summary_and_elements_are_400(client: AsgiClient) -> None:
    for url in (
        "/fhir/Patient?_summary=maybe",
        "/fhir/Patient/p1?_summary=maybe",
        "/fhir/Patient?_summary=true&_summary=false",
        "/fhir/Patient?_summary=true&_elements=name",
        "/fhir/Patient/p1?_elements=name.family",
        "/fhir/Patient?_elements=na$me",
        "/fhir/Patient?_elements=name,-gender",
    ):
        response = client.get(url)
        assert response.status_code == 400, url
        assert response.json()["resourceType"] == "OperationOutcome"


def test_a_subset_is_audited_with_the_patient_it_left_out(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    client = AsgiClient(app, token=READER)
    assert "subject" not in client.get("/fhir/Observation/o1?_elements=code").json()
    assert "subject" not in client.get("/fhir/Observation?_id=o1&_elements=code").json()["entry"][0]["resource"]

    assert app.state.audit_trail.flush()
    events = ResourceStore(app.state.engine).search("AuditEvent", {"patient": ["p1"]})
    assert len(events) == 2


# 3. POST [type]/_search and HEAD


def test_post_search_answers_as_get(client: AsgiClient) -> None:
    form = {"family": "doe", "birthdate": "1970-06-01"}
    got = client.get("/fhir/Patient", params=form).json()
    posted = client.request("POST", "/fhir/Patient/_search", content=urlencode(form), headers=FORM)

    assert posted.status_code == 200
    assert ids(posted.json()) == ids(got) == ["p1"]
    assert posted.json()["total"] == got["total"] == 1
    # URL parameters and form parameters together (ANDed as in one GET).
    merged = client.request("POST", "/fhir/Patient/_search?family=roe", content="_count=5", headers=FORM).json()
    assert ids(merged) == ["p2"]
    self_link = next(link["url"] for link in merged["link"] if link["relation"] == "self")
    assert self_link == "http://testserver/fhir/Patient?family=roe&_count=5"
    # Paging links of a POST are GET URLs that go on with the same search.
    first = client.request("POST", "/fhir/Patient/_search", content="_count=1&_sort=_id", headers=FORM).json()
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "/_search" not in following and ids(client.get(following).json()) == ["p2"]
    # Or the client POSTs the next page too, its cursor in the form: nothing of the search in a URL.
    cursor = parse_qs(urlsplit(following).query)["_cursor"][0]
    form = urlencode({"_count": "1", "_sort": "_id", "_cursor": cursor})
    assert ids(client.request("POST", "/fhir/Patient/_search", content=form, headers=FORM).json()) == ["p2"]
    # _summary, _elements and charset parameters work the same.
    summary = client.request(
        "POST",
        "/fhir/Patient/_search",
        content="_summary=count",
        headers={**FORM, "Content-Type": f"{FORM['Content-Type']}; charset=UTF-8"},
    ).json()
    assert summary["total"] == 2 and "entry" not in summary


def test_post_search_refuses_other_bodies_and_unknown_parameters(client: AsgiClient) -> None:
    response = client.request(
        "POST", "/fhir/Patient/_search", content=b'{"family":"doe"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 415 and response.json()["issue"][0]["code"] == "not-supported"
    assert client.request("POST", "/fhir/Patient/_search", content=b"family=doe").status_code == 415  # no type
    assert client.request("POST", "/fhir/Patient/_search", content=b"shoe-size=42", headers=FORM).status_code == 400
    assert client.request("POST", "/fhir/Patient/_search", content=b"family=%ff", headers=FORM).status_code == 400
    assert client.request("POST", "/fhir/Nothing/_search", content=b"x=1", headers=FORM).status_code == 404
    unauthorized = client.request("POST", "/fhir/Patient/_search", content=b"family=doe", headers=FORM, token="")
    assert unauthorized.status_code == 401
    too_big = client.request("POST", "/fhir/Patient/_search", content=b"family=" + b"x" * (1 << 20), headers=FORM)
    assert too_big.status_code == 413


def test_post_search_is_audited_without_its_parameters_in_the_request_line(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    client = AsgiClient(app, token=READER)
    posted = client.request("POST", "/fhir/Patient/_search", content=b"family=Doe&birthdate=1970-06-01", headers=FORM)
    assert ids(posted.json()) == ["p1"]

    assert app.state.audit_trail.flush()
    (event,) = ResourceStore(app.state.engine).search("AuditEvent", {"patient": ["p1"]})
    (query,) = [entity for entity in event["entity"] if entity["role"]["code"] == "24"]
    assert query["description"] == "POST /fhir/Patient/_search"
    assert base64.b64decode(query["query"]).decode() == "family=Doe&birthdate=1970-06-01"
    assert event["subtype"][0]["code"] == "search-type"


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/metadata",
        "/fhir/Patient/p1",
        "/fhir/Patient/p1/_history/1",
        "/fhir/Patient/p1/_history",
        "/fhir/Patient/_history",
        "/fhir/Patient?family=doe",
        "/fhir/Patient/nobody",
        "/fhir/Patient/bad$id",
        "/health/live",
    ],
)
def test_head_answers_as_get_without_a_body(client: AsgiClient, url: str) -> None:
    got = client.get(url)
    head = client.request("HEAD", url)

    assert head.status_code == got.status_code
    assert head.content == b""
    for name in ("content-type", "etag", "last-modified"):
        assert head.headers.get(name) == got.headers.get(name)
    if "/Patient" in url and got.status_code == 200 and "_history" not in url and "?" not in url:
        assert int(head.headers["content-length"]) == len(got.content)


def test_head_is_not_audited(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    client = AsgiClient(app, token=READER)
    assert client.request("HEAD", "/fhir/Patient/p1").status_code == 200
    assert client.request("HEAD", "/fhir/Observation?patient=p1").status_code == 200
    assert app.state.audit_trail.flush()
    assert ResourceStore(app.state.engine).search("AuditEvent", {"patient": ["p1"]}) == []
    client.get("/fhir/Patient/p1")
    assert app.state.audit_trail.flush()
    assert len(ResourceStore(app.state.engine).search("AuditEvent", {"patient": ["p1"]})) == 1
    # A refused HEAD is a failed authentication like any other, recorded as the HEAD it was.
    assert client.request("HEAD", "/fhir/Patient/p1", token="").status_code == 401
    assert app.state.audit_trail.flush()
    (refusal,) = ResourceStore(app.state.engine).search("AuditEvent", {"type": ["110114"]})
    assert refusal["entity"][0]["description"] == "HEAD /fhir/Patient/p1"


# 6. CORS


def test_cors_is_off_by_default(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient/p1", headers={"Origin": "https://app.example.org"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.request(
        "OPTIONS",
        "/fhir/Patient",
        headers={"Origin": "https://app.example.org", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_for_configured_origins(tmp_path: Path) -> None:
    app = make_app(tmp_path, cors_origins="https://app.example.org, http://localhost:3000")
    client = AsgiClient(app, token=READER)
    origin = {"Origin": "https://app.example.org"}
    preflight = client.request(
        "OPTIONS",
        "/fhir/Patient/_search",
        token="",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, prefer",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed and "prefer" in allowed

    read = client.get("/fhir/Patient/p1", headers=origin)
    assert read.headers["access-control-allow-origin"] == "https://app.example.org"
    exposed = {name.strip().lower() for name in read.headers["access-control-expose-headers"].split(",")}
    assert exposed >= {"etag", "location", "content-location", "x-progress", "retry-after", "last-modified"}
    refused = client.get("/fhir/Patient/p1", headers=origin, token="")  # errors carry it too
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example.org"
    other = client.request(
        "OPTIONS", "/fhir/Patient", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert (
        "access-control-allow-origin"
        not in client.get("/fhir/Patient/p1", headers={"Origin": "https://evil.example"}).headers
    )


def test_cors_wildcard(tmp_path: Path) -> None:
    client = AsgiClient(make_app(tmp_path, cors_origins="*"), token=READER)
    response = client.get("/fhir/metadata", headers={"Origin": "https://anywhere.example"})
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("value", ["app.example.org", "https://app.example.org/path", "*,https://a.example", "ftp://x"])
def test_cors_origins_must_be_origins(tmp_path: Path, value: str) -> None:
    with pytest.raises(Exception, match="origin|'\\*'"):
        load_settings(data_dir=tmp_path, cors_origins=value)


# 7. Discovery


def test_every_search_parameter_has_its_r4_definition(client: AsgiClient) -> None:
    statement = client.get("/fhir/metadata", token="").json()
    definitions = {
        (resource["type"], param["name"]): param["definition"]
        for resource in statement["rest"][0]["resource"]
        for param in resource.get("searchParam", [])  # Group has only its $export
    }
    assert all(definitions.values())
    assert definitions["Observation", "patient"] == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    assert definitions["Observation", "subject"] == "http://hl7.org/fhir/SearchParameter/Observation-subject"
    assert definitions["Patient", "family"] == "http://hl7.org/fhir/SearchParameter/individual-family"
    assert definitions["Patient", "identifier"] == "http://hl7.org/fhir/SearchParameter/Patient-identifier"
    assert definitions["MedicationRequest", "date"] == "http://hl7.org/fhir/SearchParameter/medications-date"
    assert definitions["Encounter", "date"] == "http://hl7.org/fhir/SearchParameter/clinical-date"
    assert definitions["Patient", "_id"] == "http://hl7.org/fhir/SearchParameter/Resource-id"
    assert definitions["Patient", "_lastUpdated"] == "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"
    assert definitions["PractitionerRole", "email"] == "http://hl7.org/fhir/SearchParameter/individual-email"
    assert definitions["Organization", "address"] == "http://hl7.org/fhir/SearchParameter/Organization-address"
    assert definitions["AuditEvent", "entity-identifier"].startswith("urn:hl7gw:")  # the gateway's own
    assert definitions["Subscription", "status"] == "http://hl7.org/fhir/SearchParameter/Subscription-status"


@pytest.mark.parametrize("bad_id", ["a$b", "a%20b", "x" * 65, "a_b", "%C3%A9"])
def test_a_malformed_id_is_400_everywhere_an_id_is_taken(client: AsgiClient, bad_id: str) -> None:
    for url in (f"/fhir/Patient/{bad_id}", f"/fhir/Patient/{bad_id}/_history", f"/fhir/Patient/{bad_id}/_history/1"):
        for method in ("GET", "HEAD"):
            response = client.request(method, url)
            assert response.status_code == 400, (method, url)
        assert client.get(url).json()["issue"][0]["code"] == "invalid"
    for url in ("/fhir/Patient/unknown", "/fhir/Patient/unknown/_history", "/fhir/Patient/unknown/_history/1"):
        assert client.get(url).status_code == 404


def test_an_operation_this_server_lacks_is_400_not_supported(client: AsgiClient) -> None:
    for url in ("/fhir/Patient/$everything", "/fhir/Observation/$lastn", "/fhir/Patient/$validate/_history"):
        response = client.get(url)
        assert response.status_code == 400, url
        issue = response.json()["issue"][0]
        assert issue["code"] == "not-supported" and "is not supported here" in issue["diagnostics"], url


def test_served_payloads_are_checked(client: AsgiClient) -> None:
    """The autouse check (tests/support/fhir_validation.py) sees what the API renders, and refuses what is invalid."""
    from tests.support.fhir_validation import PayloadCheck, problems_in

    assert problems_in(orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}))
    assert problems_in(orjson.dumps({"resourceType": "Patient", "birthDate": "June"}))
    assert problems_in(orjson.dumps({"resourceType": "Patient", "shoeSize": 42}))
    with PayloadCheck().installed() as check:
        client.get("/fhir/Patient/p1")
        client.get("/fhir/Patient?family=nobody")
    assert check.checked == 2 and check.problems == []
    assert isinstance(httpx.Response, type)
