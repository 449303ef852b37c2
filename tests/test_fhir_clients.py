"""The FHIR API as real clients use it: fhirpy (sync and async) and fhirclient (SMART on FHIR) over HTTP.

A real uvicorn server runs in a thread over the app, on SQLite and (when HL7GW_TEST_DATABASE_URL is
set) PostgreSQL. Paging tests write resources between page fetches to show the links stay stable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirclient import client as smart_client
from fhirclient.models.bundle import Bundle as SmartBundle
from fhirclient.models.observation import Observation as SmartObservation
from fhirclient.models.patient import Patient as SmartPatient
from fhirclient.models.provenance import Provenance as SmartProvenance
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome, ResourceNotFound
from sqlalchemy.engine import Engine

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import delete, observation, patient, put, transaction
from tests.support.server_thread import ServerThread

TOKEN = "client-test-token"
MRN = "urn:oid:1.2.3.4"
PATIENTS = [f"p{n:03d}" for n in range(12)]


@dataclass
class Served:
    base: str
    store: ResourceStore


@pytest.fixture
def served(engine: Engine, tmp_path: Path) -> Iterator[Served]:
    app = create_app(load_settings(data_dir=tmp_path, api_tokens=f"{TOKEN}:reader"), engine)
    store: ResourceStore = app.state.store
    store.apply_bundle(
        transaction(*(put(patient(pid, f"MRN{n}", family=f"Family{n % 3}")) for n, pid in enumerate(PATIENTS)))
    )
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"}}
    encounter["subject"] = {"reference": "Patient/p001"}
    at_e1 = {"encounter": {"reference": "Encounter/e1"}}
    observations = [
        observation(
            f"o{month}",
            "p001",
            effectiveDateTime=f"2024-{month:02d}-01T08:00:00Z",
            valueQuantity={"value": 10 * month, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            **at_e1,
        )
        for month in range(1, 8)
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "panel"},
        "subject": {"reference": "Patient/p001"},
        "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}],
    }
    provenance = {
        "resourceType": "Provenance",
        "id": "prov1",
        "recorded": "2024-01-01T08:00:01Z",
        "target": [{"reference": "Patient/p001"}, {"reference": "Encounter/e1"}],
        "agent": [{"who": {"display": "hl7gw"}}],
    }
    store.apply_bundle(transaction(put(encounter), *(put(o) for o in observations), put(report), put(provenance)))
    store.apply_bundle(transaction(put(patient("p001", "MRN1", family="Renamed"))))  # p001 has two versions
    with ServerThread(app) as server:
        yield Served(f"http://127.0.0.1:{server.port}/fhir", store)


def add_patients(store: ResourceStore, *ids: str) -> None:
    store.apply_bundle(transaction(*(put(patient(pid, f"NEW-{pid}")) for pid in ids)))


# fhirpy, synchronous


def test_fhirpy_search_read_vread(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")

    found = client.resources("Patient").search(identifier=f"{MRN}|MRN3").fetch()
    assert [p["id"] for p in found] == ["p003"]
    assert client.resources("Patient").search(family="family1").count() == 3  # p001 was renamed
    renamed = client.reference("Patient", "p001").to_resource()
    assert renamed["name"][0]["family"] == "Renamed" and renamed["meta"]["versionId"] == "2"
    first = client.execute("Patient/p001/_history/1", method="get")
    assert first["name"][0]["family"] == "Family1"
    renamed.refresh()  # sends If-None-Match; the server answers 304 and the copy stays
    assert renamed["meta"]["versionId"] == "2"
    newest_first = client.resources("Observation").search(patient="p001").sort("-date").fetch_all()
    dates = [o["effectiveDateTime"][:7] for o in newest_first]
    assert dates == [f"2024-{m:02d}" for m in range(7, 0, -1)]
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "nobody").to_resource()
    with pytest.raises(OperationOutcome):
        client.resources("Patient").search(shoe_size="42").fetch()


def test_fhirpy_pages_stay_stable_while_resources_are_written(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")
    seen: list[str] = []
    for resource in client.resources("Patient").limit(5):  # follows next links page by page
        seen.append(resource["id"])
        if len(seen) in (1, 6):  # while a page is being read: one id before the cursor, one after
            add_patients(served.store, f"p-early-{len(seen)}", f"pz-late-{len(seen)}")
            served.store.apply_bundle(transaction(delete("Patient", "p011")))

    # Pages continue after the last id shown: nothing repeats or is skipped, earlier ids stay behind,
    # later ones show up, and the deleted p011 is gone by the time its page is read.
    assert seen == PATIENTS[:11] + ["pz-late-1", "pz-late-6"]


def test_fhirpy_include_and_revinclude(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")

    search = client.resources("Observation").search(_id="o1")
    bundle = search.include("Observation", "patient").include("Observation", "encounter").fetch_raw()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("Observation", "match"), ("Patient", "include"), ("Encounter", "include")}

    reports = client.resources("DiagnosticReport").include("DiagnosticReport", "result").fetch_raw()
    assert sorted(e["resource"]["id"] for e in reports["entry"]) == ["o1", "o2", "r1"]

    patients = client.resources("Patient").search(_id="p001").revinclude("Provenance", "target").fetch_raw()
    assert [e["resource"]["id"] for e in patients["entry"]] == ["p001", "prov1"]
    assert client.resources("Patient").search(_id="p001").revinclude("Provenance", "target").fetch()[0]["id"] == "p001"


def test_fhirpy_elements_summary_count_first_get(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")
    subsetted = "SUBSETTED"

    names = client.resources("Patient").search(_id="p003").elements("name").fetch()
    assert set(names[0]) == {"resourceType", "id", "meta", "name"}
    assert [tag["code"] for tag in names[0]["meta"]["tag"]] == [subsetted]
    left_out = client.resources("Observation").search(_id="o1").elements("encounter", exclude=True).first()
    assert left_out is not None and "encounter" not in left_out and left_out["subject"]
    summary = client.resources("Observation").search(patient="p001", _summary="true").fetch_all()
    assert len(summary) == 7 and all(subsetted in [t["code"] for t in o["meta"]["tag"]] for o in summary)
    counted = client.resources("Observation").search(patient="p001", _summary="count").fetch_raw()
    assert counted["total"] == 7 and "entry" not in counted
    assert client.resources("Observation").search(patient="p001").count() == 7
    assert client.resources("Patient").search(family="nobody").fetch() == []
    assert client.resources("Patient").search(family="nobody").first() is None
    assert client.resources("Patient").search(_id="p004").get()["id"] == "p004"
    read = client.get("Patient", "p001")  # a read; _summary on a read goes through execute
    assert read["meta"]["versionId"] == "2"
    text = client.execute("Patient/p001", method="get", params={"_summary": "text"})
    assert set(text) <= {"resourceType", "id", "meta", "text"} and subsetted in [t["code"] for t in text["meta"]["tag"]]
    history = client.resource("Patient", id="p001").execute("_history", method="get")
    assert [entry["response"]["etag"] for entry in history["entry"]] == ['W/"2"', 'W/"1"']


def test_fhirpy_malformed_and_unknown_ids(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")
    with pytest.raises(OperationOutcome, match="resource id"):
        client.reference("Patient", "not_an$id").to_resource()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", "no-such-patient").to_resource()


def test_head_and_cors_preflight_over_a_real_server(served: Served) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    got = httpx.get(f"{served.base}/Patient/p001", headers=auth)
    head = httpx.head(f"{served.base}/Patient/p001", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == got.headers["etag"] == 'W/"2"'
    assert head.headers["content-length"] == str(len(got.content))
    searched = httpx.head(f"{served.base}/Observation", params={"patient": "p001"}, headers=auth)
    assert searched.status_code == 200 and searched.content == b""
    # CORS is off in this server: a preflight gets no CORS headers (tests/test_api_polish.py turns it on).
    preflight = httpx.options(
        f"{served.base}/Patient", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_fhirpy_chains_has_modifiers_and_quantities(served: Served) -> None:
    client = SyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")
    observations = client.resources("Observation")

    def ids(search: Any) -> list[str]:
        return sorted(resource["id"] for resource in search.fetch_all())

    months = [f"o{month}" for month in range(1, 8)]
    assert ids(observations.search(patient__Patient__family="renamed")) == months  # patient:Patient.family
    assert ids(observations.search(subject__Patient__identifier=f"{MRN}|MRN1")) == months
    assert ids(observations.search(encounter__subject__Patient__family="renamed")) == months  # two steps
    assert ids(observations.search(patient="p001", value_quantity__gt=50)) == ["o6", "o7"]
    assert ids(observations.search(value_quantity="le20|http://unitsofmeasure.org|/min")) == ["o1", "o2"]
    assert ids(observations.search(code_value_quantity="8867-4$ap30")) == ["o3"]
    assert ids(observations.search(_lastUpdated__gt="2000-01-01", _id="o1,o2")) == ["o1", "o2"]
    assert ids(client.resources("Patient").has("Observation", "patient", code="8867-4")) == ["p001"]
    assert ids(client.resources("Patient").has("Encounter", "subject").search(_id="p001")) == ["p001"]
    assert ids(client.resources("Patient").search(name__exact="Renamed")) == ["p001"]
    assert ids(client.resources("Patient").search(birthdate__missing=True)) == sorted(PATIENTS)
    assert ids(client.resources("DiagnosticReport").search(code__text="pan")) == ["r1"]
    assert ids(client.resources("DiagnosticReport").search(status__not="final")) == []
    with pytest.raises(OperationOutcome):  # subject may be a Patient, a Group, a Device or a Location
        observations.search(subject__name="renamed").fetch()

    with_star = client.resources("Observation").search(_id="o1").include("*").fetch_raw()
    assert sorted(e["resource"]["id"] for e in with_star["entry"]) == ["e1", "o1", "p001"]
    iterated = (
        client.resources("Patient")
        .search(_id="p001")
        .revinclude("Encounter", "subject")
        .revinclude("Observation", "encounter", iterate=True)
        .fetch_raw()
    )
    assert {e["resource"]["id"] for e in iterated["entry"]} == {"p001", "e1", *months}


def test_fhirpy_needs_the_token(served: Served) -> None:
    with pytest.raises(AuthorizationError):
        SyncFHIRClient(served.base).resources("Patient").fetch()
    with pytest.raises(AuthorizationError):
        SyncFHIRClient(served.base, authorization="Bearer wrong").reference("Patient", "p001").to_resource()


# fhirpy, asynchronous


def test_fhirpy_async(served: Served) -> None:
    async def scenario() -> None:
        client = AsyncFHIRClient(served.base, authorization=f"Bearer {TOKEN}")
        found = await client.resources("Patient").search(identifier="MRN5").fetch()
        assert [p["id"] for p in found] == ["p005"]
        assert (await client.reference("Patient", "p002").to_resource())["id"] == "p002"
        version = await client.execute("Patient/p001/_history/2", method="get")
        assert version["meta"]["versionId"] == "2"

        seen: list[str] = []
        async for resource in client.resources("Patient").sort("_lastUpdated").limit(4):
            seen.append(resource["id"])
            if len(seen) == 2:  # newer than everything: sorts after the cursor, shows up once at the end
                await asyncio.to_thread(add_patients, served.store, "a-new")
        assert len(seen) == len(set(seen)) == 13 and seen[-1] == "a-new"
        assert seen[-2] == "p001"  # updated after the others, so last of the originals

        since_may = client.resources("Observation").search(patient="Patient/p001", date="ge2024-05")
        assert sorted(o["id"] for o in await since_may.fetch_all()) == ["o5", "o6", "o7"]
        encounters = client.resources("Encounter").include("Encounter", "subject")
        raw = await encounters.revinclude("Provenance", "target").fetch_raw()
        assert sorted(e["resource"]["id"] for e in raw["entry"]) == ["e1", "p001", "prov1"]

    asyncio.run(scenario())


# fhirclient (SMART on FHIR)


def smart(served: Served) -> Any:
    client = smart_client.FHIRClient(settings={"app_id": "hl7gw-tests", "api_base": served.base})
    client.server.session.headers["Authorization"] = f"Bearer {TOKEN}"
    return client


def test_fhirclient_reads_the_capability_statement(served: Served) -> None:
    server = smart(served).server
    server.get_capability()
    resources = {resource.type: resource for resource in server.capabilityStatement.rest[0].resource}
    assert {"Patient", "Observation", "Provenance", "MedicationAdministration"} <= set(resources)
    assert "Observation:patient" in resources["Observation"].searchInclude
    definitions = {param.name: param.definition for param in resources["Observation"].searchParam}
    assert definitions["patient"] == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    assert definitions["_id"] == "http://hl7.org/fhir/SearchParameter/Resource-id"


def test_fhirclient_read_vread_history(served: Served) -> None:
    server = smart(served).server

    current = SmartPatient.read("p001", server)
    assert current.name[0].family == "Renamed"
    first = SmartPatient.read_from("Patient/p001/_history/1", server)
    assert first.name[0].family == "Family1" and first.meta.versionId == "1"
    history = SmartBundle.read_from("Patient/p001/_history", server)
    assert history.type == "history"
    assert [entry.response.etag for entry in history.entry] == ['W/"2"', 'W/"1"']


def test_fhirclient_search_and_paging_under_writes(served: Served) -> None:
    server = smart(served).server

    by_identifier = SmartPatient.where(struct={"identifier": "MRN7"}).perform_resources_iter(server)
    assert [p.id for p in by_identifier] == ["p007"]
    by_date = SmartObservation.where(struct={"patient": "p001", "date": {"$gte": "2024-06-01"}})
    assert sorted(o.id for o in by_date.perform_resources_iter(server)) == ["o6", "o7"]

    pages: list[list[str]] = []
    for bundle in SmartPatient.where(struct={"_count": "5"}).perform_iter(server):
        pages.append([entry.resource.id for entry in bundle.entry])
        if len(pages) == 1:
            add_patients(served.store, "p-before", "pz-after")
    ids = [pid for page in pages for pid in page]
    assert ids == sorted(PATIENTS + ["pz-after"])
    assert [len(page) for page in pages] == [5, 5, 3]


def test_fhirclient_elements_and_post_search(served: Served) -> None:
    client = smart(served)
    server = client.server

    # fhirclient checks the mandatory elements when it parses: a subset keeps them.
    subsetted = SmartObservation.where(struct={"patient": "p001", "_elements": "effective"})
    subsetted = list(subsetted.perform_resources_iter(server))
    assert len(subsetted) == 7 and all(o.status == "final" and o.code and o.effectiveDateTime for o in subsetted)
    assert subsetted[0].meta.tag[0].code == "SUBSETTED"
    summary = SmartPatient.read_from("Patient/p003?_summary=true", server)
    assert summary.name[0].family == "Family0" and summary.meta.tag[0].code == "SUBSETTED"

    posted = server.post_as_form(f"{served.base}/Patient/_search", {"family": "family1", "_count": "2"})
    bundle = SmartBundle(posted.json())
    assert bundle.type == "searchset" and bundle.total == 3 and len(bundle.entry) == 2
    following = next(link.url for link in bundle.link if link.relation == "next")
    rest = SmartBundle.read_from(following.removeprefix(served.base + "/"), server)
    assert len(rest.entry) == 1


def test_fhirclient_include(served: Served) -> None:
    server = smart(served).server

    search = SmartObservation.where(struct={"_id": "o3"}).include("subject")
    bundle = next(search.perform_iter(server))
    assert [(e.resource.resource_type, e.search.mode) for e in bundle.entry] == [
        ("Observation", "match"),
        ("Patient", "include"),
    ]
    reverse = SmartPatient.where(struct={"_id": "p001"}).include("target", SmartProvenance, reverse=True)
    assert [r.id for r in reverse.perform_resources_iter(server)] == ["p001", "prov1"]
