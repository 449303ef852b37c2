"""The FHIR REST API: metadata, read, vread, search, and OperationOutcome for every error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from gateway.api.app import create_app
from gateway.config import Settings, load_settings
from gateway.db.engine import make_engine
from gateway.store.search_registry import COMMON_PARAMETERS, SEARCH_PARAMETERS, supported_types
from tests.support.asgi_client import AsgiClient
from tests.support.fhir_bundles import delete, observation, patient, put, transaction

READER = "reader-token"
ADMIN = "admin-token"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, api_tokens=f"{READER}:reader,op-token:operator,{ADMIN}:admin")


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    app.state.store.apply_bundle(
        transaction(
            put(patient("p1", "MRN1", family="Doe", birthDate="1970-06-01")),
            put(patient("p2", "MRN2", family="Roe")),
            put(patient("p3", "MRN3", family="Doerr")),
            put(observation("o1", "p1", effectiveDateTime="2020-01-01T10:00:00Z")),
            put(observation("o2", "p1", effectiveDateTime="2021-01-01T10:00:00Z")),
        )
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> AsgiClient:
    return AsgiClient(app, token=READER)


def assert_outcome(response: httpx.Response, status: int, code: str, diagnostics: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    OperationOutcome.model_validate(body)
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["code"] == code
    assert diagnostics in issue["diagnostics"]
    return body


def test_metadata_lists_exactly_what_is_supported(client: AsgiClient) -> None:
    response = client.get("/fhir/metadata", token="")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["format"] == ["application/fhir+json", "application/json", "json"]
    resources = statement["rest"][0]["resource"]
    # Group is there for its $export only (Bulk Data group-export): it has no interaction of its own.
    assert resources[-1] == {"type": "Group", "operation": [ANY_GROUP_EXPORT]}
    resources = resources[:-1]
    assert resources.pop()["type"] == "Subscription"  # kept apart from the store (tests/test_subscription_api.py)
    assert [r["type"] for r in resources] == supported_types()
    for resource in resources:
        codes = [i["code"] for i in resource["interaction"]]
        assert codes == ["read", "vread", "history-instance", "history-type", "search-type"]
        assert resource["conditionalRead"] == "full-support"
        names = {p["name"]: p["type"] for p in resource["searchParam"]}
        expected = {name: p.kind for name, p in SEARCH_PARAMETERS[resource["type"]].items()} | dict(COMMON_PARAMETERS)
        assert names == expected
    by_type = {resource["type"]: resource for resource in resources}
    assert {"Observation:patient", "Observation:subject", "Observation:encounter"} <= set(
        by_type["Observation"]["searchInclude"]
    )
    assert "DiagnosticReport:result" in by_type["DiagnosticReport"]["searchInclude"]
    assert "Encounter:subject" in by_type["Encounter"]["searchInclude"]
    assert {"Provenance:target", "Observation:patient", "Encounter:subject"} <= set(
        by_type["Patient"]["searchRevInclude"]
    )
    assert "Observation:encounter" not in by_type["Patient"]["searchRevInclude"]  # it points at Encounters only
    assert {p["name"] for p in statement["rest"][0]["searchParam"]} >= {"_count", "_sort", "_include", "_total"}


class _GroupExport:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and other.get("definition", "").endswith("/OperationDefinition/group-export")


ANY_GROUP_EXPORT = _GroupExport()
_SAMPLE_VALUES = {"token": "x", "string": "x", "date": "ge2020", "reference": "x", "quantity": "gt1||mg"}


def sample_value(resource_type: str, name: str, kind: str) -> str:
    if kind != "composite":
        return _SAMPLE_VALUES[kind]
    components = SEARCH_PARAMETERS[resource_type][name].components
    return "$".join(_SAMPLE_VALUES[SEARCH_PARAMETERS[resource_type][part].kind] for part in components)


def test_every_advertised_parameter_and_include_is_accepted(app: FastAPI) -> None:
    client = AsgiClient(app, token=ADMIN)  # an admin: the audit trail (AuditEvent) is advertised too
    statement = client.get("/fhir/metadata").json()
    for resource in statement["rest"][0]["resource"]:
        if "interaction" not in resource:
            continue  # Group: $export only
        path = f"/fhir/{resource['type']}"
        for param in resource["searchParam"]:
            value = sample_value(resource["type"], param["name"], param["type"])
            response = client.get(path, params={param["name"]: value, "_count": "1"})
            assert response.status_code == 200, (path, param, response.text)
        for name, values in (("_include", "searchInclude"), ("_revinclude", "searchRevInclude")):
            for value in resource.get(values, []):
                response = client.get(path, params={name: value, "_count": "1"})
                assert response.status_code == 200, (path, name, value, response.text)
        assert client.get(path, params={"not-a-parameter": "x"}).status_code == 400


def test_read(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient/p1")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith(" GMT")
    body = response.json()
    assert body["id"] == "p1" and body["meta"]["versionId"] == "1"


def test_read_missing_deleted_and_unknown_type(app: FastAPI, client: AsgiClient) -> None:
    app.state.store.apply_bundle(transaction(delete("Patient", "p2")))

    assert_outcome(client.get("/fhir/Patient/nope"), 404, "not-found", "Patient/nope is not known")
    assert_outcome(client.get("/fhir/Patient/p2"), 410, "deleted", "Patient/p2 was deleted")
    assert_outcome(client.get("/fhir/Spaceship/1"), 404, "not-supported", "'Spaceship' is not supported")
    assert_outcome(client.get("/fhir/Spaceship"), 404, "not-supported")


def test_vread(app: FastAPI, client: AsgiClient) -> None:
    app.state.store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Changed"))))
    app.state.store.apply_bundle(transaction(delete("Patient", "p1")))

    first = client.get("/fhir/Patient/p1/_history/1")
    second = client.get("/fhir/Patient/p1/_history/2")

    assert first.status_code == 200 and first.json()["name"][0]["family"] == "Doe"
    assert second.status_code == 200 and second.json()["name"][0]["family"] == "Changed"
    assert second.headers["etag"] == 'W/"2"'
    assert_outcome(client.get("/fhir/Patient/p1/_history/3"), 410, "deleted")
    assert_outcome(client.get("/fhir/Patient/p1/_history/4"), 404, "not-found")
    assert_outcome(client.get("/fhir/Patient/p1/_history/x"), 400, "invalid", "version id")


def test_search_returns_a_searchset_bundle(client: AsgiClient) -> None:
    response = client.get("/fhir/Patient", params={"family": "doe"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    bundle = response.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 2
    assert bundle["link"] == [{"relation": "self", "url": "http://testserver/fhir/Patient?family=doe"}]
    assert [e["fullUrl"] for e in bundle["entry"]] == [
        "http://testserver/fhir/Patient/p1",
        "http://testserver/fhir/Patient/p3",
    ]
    assert all(e["search"] == {"mode": "match"} for e in bundle["entry"])
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["p1", "p3"]


def test_search_observations_by_patient_and_date(client: AsgiClient) -> None:
    encoded = client.get("/fhir/Observation?patient=Patient/p1&date=ge2020-12-31T23:00:00%2B01:00")
    unencoded_plus = client.get("/fhir/Observation?patient=p1&date=ge2020-12-31T23:00:00+01:00")
    everything = client.get("/fhir/Observation", params={"subject": "Patient/p1"})

    assert [e["resource"]["id"] for e in encoded.json()["entry"]] == ["o2"]
    assert [e["resource"]["id"] for e in unencoded_plus.json()["entry"]] == ["o2"]
    assert everything.json()["total"] == 2


def test_search_pages_with_next_and_previous_links(client: AsgiClient) -> None:
    first = client.get("/fhir/Patient?_count=2").json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert first["total"] == 3 and len(first["entry"]) == 2 and "previous" not in links

    second = client.get(links["next"]).json()
    second_links = {link["relation"]: link["url"] for link in second["link"]}

    assert [e["resource"]["id"] for e in second["entry"]] == ["p3"]
    assert "next" not in second_links
    assert [e["resource"]["id"] for e in client.get(second_links["previous"]).json()["entry"]] == ["p1", "p2"]
    count_only = client.get("/fhir/Patient?_count=0").json()
    assert count_only["total"] == 3 and "entry" not in count_only


def test_search_errors_are_operation_outcomes(client: AsgiClient) -> None:
    assert_outcome(
        client.get("/fhir/Patient?shoe-size=42"), 400, "not-supported", "unknown search parameter 'shoe-size'"
    )
    assert_outcome(client.get("/fhir/Patient?birthdate=1970-02-30"), 400, "invalid", "not a valid date")
    assert_outcome(client.get("/fhir/Patient?birthdate=soon"), 400, "invalid")
    assert_outcome(client.get("/fhir/Patient?_count=many"), 400, "invalid", "_count")
    assert_outcome(client.get("/fhir/Patient?_format=xml"), 406, "not-supported", "only JSON")
    assert_outcome(client.get("/fhir/Patient?_pretty=maybe"), 400, "invalid", "_pretty")
    assert client.get("/fhir/Patient?_format=json&_pretty=true").status_code == 200
    assert client.get("/fhir/Patient?_format=application/fhir+json").status_code == 200


def test_framework_errors_are_operation_outcomes(client: AsgiClient) -> None:
    not_allowed = client.request("DELETE", "/fhir/Patient/p1")
    assert_outcome(not_allowed, 405, "not-supported")
    assert not_allowed.headers["allow"] == "GET"
    assert_outcome(client.request("POST", "/fhir/Patient", json={}), 405, "not-supported")
    assert_outcome(client.get("/nowhere"), 404, "not-found")
    assert_outcome(client.get("/fhir-nowhere"), 404, "not-found")


def test_unexpected_errors_are_operation_outcomes(app: FastAPI, client: AsgiClient) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/explode", explode)

    body = assert_outcome(client.get("/explode"), 500, "exception", "internal server error")
    assert "secret" not in str(body)


def test_an_unreachable_database_answers_503(settings: Settings) -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    try:
        client = AsgiClient(create_app(settings, engine), token=READER)
        response = client.get("/fhir/Patient/p1")
    finally:
        engine.dispose()

    assert_outcome(response, 503, "transient", "database is unavailable")
    assert response.headers["retry-after"] == "5"


def test_search_includes_referenced_resources(app: FastAPI, client: AsgiClient) -> None:
    provenance = {
        "resourceType": "Provenance",
        "id": "prov1",
        "recorded": "2020-01-01T00:00:00Z",
        "target": [{"reference": "Observation/o1"}],
        "agent": [{"who": {"display": "hl7gw"}}],
    }
    app.state.store.apply_bundle(transaction(put(provenance)))

    bundle = client.get(
        "/fhir/Observation?_id=o1&_include=Observation:patient&_revinclude=Provenance:target&_sort=-date"
    ).json()

    Bundle.model_validate(bundle)
    assert [(e["fullUrl"], e["search"]["mode"]) for e in bundle["entry"]] == [
        ("http://testserver/fhir/Observation/o1", "match"),
        ("http://testserver/fhir/Patient/p1", "include"),
        ("http://testserver/fhir/Provenance/prov1", "include"),
    ]
    assert bundle["total"] == 1  # matches only


def test_sort_by_date_through_the_api(client: AsgiClient) -> None:
    newest_first = client.get("/fhir/Observation?_sort=-date").json()
    oldest_first = client.get("/fhir/Observation", params={"_sort": "date"}).json()

    assert [e["resource"]["id"] for e in newest_first["entry"]] == ["o2", "o1"]
    assert [e["resource"]["id"] for e in oldest_first["entry"]] == ["o1", "o2"]
    assert_outcome(client.get("/fhir/Observation?_sort=patient"), 400, "not-supported", "cannot sort by 'patient'")


def test_summary_count_and_total_none(client: AsgiClient) -> None:
    counted = client.get("/fhir/Patient?_summary=count").json()
    uncounted = client.get("/fhir/Patient?_total=none").json()

    assert counted["total"] == 3 and "entry" not in counted
    assert "total" not in uncounted and len(uncounted["entry"]) == 3


def test_unknown_parameters_are_refused_unless_lenient(client: AsgiClient) -> None:
    assert_outcome(client.get("/fhir/Patient?family=doe&shoe-size=42"), 400, "not-supported", "shoe-size")

    response = client.get(
        "/fhir/Patient?family=doe&shoe-size=42&_count=1", headers={"Prefer": "return=representation, handling=lenient"}
    )

    assert response.status_code == 200
    bundle = response.json()
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"] == "http://testserver/fhir/Patient?family=doe&_count=1"
    assert "shoe-size" not in links["next"]
    assert bundle["total"] == 2
    following = client.get(links["next"], headers={"Prefer": "handling=lenient"}).json()
    assert [e["resource"]["id"] for e in following["entry"]] == ["p3"]


def test_a_cursor_link_survives_writes_between_pages(app: FastAPI, client: AsgiClient) -> None:
    first = client.get("/fhir/Patient?_count=2&_sort=-_lastUpdated").json()
    app.state.store.apply_bundle(transaction(put(patient("p0", "MRN0")), put(patient("p9", "MRN9"))))
    links = {link["relation"]: link["url"] for link in first["link"]}

    second = client.get(links["next"]).json()

    seen = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
    assert sorted(seen) == ["p1", "p2", "p3"]  # the new ones sort before the cursor; nothing repeats
    assert_outcome(client.get(links["next"].replace("_count=2", "_count=2&family=x")), 400, "invalid", "_cursor")


def test_ids_and_version_ids_that_cannot_exist_are_refused_cleanly(client: AsgiClient) -> None:
    huge = "9" * 23  # beyond 64 bits: used to reach the database and answer 500
    assert_outcome(client.get(f"/fhir/Patient/p1/_history/{huge}"), 404, "not-found")
    assert_outcome(client.get("/fhir/Patient/p1/_history/0"), 404, "not-found")
    assert_outcome(client.get("/fhir/Patient/p1/_history/-1"), 400, "invalid", "version id")
    for bad_id in ("a$b", "a%20b", "x" * 65):
        assert_outcome(client.get(f"/fhir/Patient/{bad_id}"), 400, "invalid", "resource id")
        assert_outcome(client.get(f"/fhir/Patient/{bad_id}/_history"), 400, "invalid", "resource id")
        assert_outcome(client.get(f"/fhir/Patient/{bad_id}/_history/1"), 400, "invalid", "resource id")
    assert client.get("/fhir/Patient/" + "x" * 64).status_code == 404  # the longest id is a fine id


def test_a_search_with_too_many_values_is_a_400_naming_the_limit(client: AsgiClient) -> None:
    from gateway.store.search import MAX_CONDITIONS, MAX_VALUES

    many = ",".join(f"v{n}" for n in range(MAX_VALUES + 1))
    assert_outcome(client.get(f"/fhir/Patient?identifier={many}"), 400, "invalid", f"at most {MAX_VALUES}")
    assert_outcome(client.get(f"/fhir/Patient?family={many}"), 400, "invalid", f"at most {MAX_VALUES}")
    repeated = "&".join(f"family=v{n}" for n in range(MAX_CONDITIONS + 1))
    assert_outcome(client.get(f"/fhir/Patient?{repeated}"), 400, "invalid", f"at most {MAX_CONDITIONS}")
    # At the limits a search works (tests/test_store_search.py: on PostgreSQL too).
    just = ",".join(f"v{n}" for n in range(MAX_VALUES))
    assert client.get(f"/fhir/Patient?identifier={just}").status_code == 200
    assert client.get(f"/fhir/Patient?family={just}").status_code == 200
    assert client.get("/fhir/Patient?" + "&".join(f"family=v{n}" for n in range(MAX_CONDITIONS))).status_code == 200


def test_the_api_description_is_served_offline_and_behind_a_token(client: AsgiClient) -> None:
    anonymous = AsgiClient(client.app)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert_outcome(anonymous.get(path), 401, "login")
        assert client.get(path).status_code == 200
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "/docs/static/swagger-ui-bundle.js" in page
    assert "fonts.googleapis" not in client.get("/redoc").text
    script = anonymous.get("/docs/static/swagger-ui-bundle.js")  # the same for everyone: no token needed
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert len(script.content) > 100_000
    assert anonymous.get("/docs/static/../../etc/passwd").status_code == 404
    assert client.get("/openapi.json").json()["paths"]["/fhir/{resource_type}"]


def test_public_docs_need_no_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_tokens="reader-token:reader", public_docs=True)
    anonymous = AsgiClient(create_app(settings))
    assert anonymous.get("/docs").status_code == 200 and anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/fhir/Patient").status_code == 401  # the data is not public
