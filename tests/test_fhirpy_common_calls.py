"""The 16 common fhirpy calls a read-only FHIR server can answer (issue 19's acceptance check), each with
the right result, sync and async, over HTTP on SQLite and (when HL7GW_TEST_DATABASE_URL is set) PostgreSQL.

docs/fhir-api.md ("Clients") lists the calls and the query each sends. One uvicorn server per database
serves the whole module; tests only read, so they share it. tests/test_fhir_clients.py has more of
fhirpy (paging under writes, vread, history, refresh, _summary, errors) and fhirclient.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import os
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, ResourceNotFound

from gateway.api.app import create_app
from gateway.config import load_settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from tests.conftest import DATABASE_BACKENDS, postgres_schema
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.server_thread import ServerThread

TOKEN = "fhirpy-token"
MRN = "urn:oid:1.2.3.4"
SUBSETTED = "SUBSETTED"
HEART_RATE, GLUCOSE = "8867-4", "2339-0"
#: Seven Patients: (id, family, given, birthDate, gender, active); None leaves the element out.
PEOPLE = [
    ("p1", "Moore", "John", "1950-03-04", "male", True),
    ("p2", "Rivera", "Eva", "1970-01-01", "female", False),
    ("p3", "Smith", "John", None, "other", True),
    ("p4", "Ng", "Ann", "1985-06-30", "female", True),
    ("p5", "Olsen", "Bo", "1990-12-01", "male", True),
    ("p6", "Carter", "Cy", "1962-07-15", "female", False),
    ("p7", "Young", "Di", "2001-02-03", None, None),
]
PATIENTS = [person[0] for person in PEOPLE]
P1_RECORDS = ["o1", "o2", "o3"]


def _records() -> list[dict[str, Any]]:
    reference = lambda kind, rid: {"reference": f"{kind}/{rid}"}  # noqa: E731
    people = []
    for pid, family, given, born, gender, active in PEOPLE:
        fields = {k: v for k, v in {"birthDate": born, "gender": gender, "active": active}.items() if v is not None}
        people.append(patient(pid, f"MRN{pid[1:]}", family=family, given=given, **fields))
    people[0] |= {
        "generalPractitioner": [reference("Practitioner", "dr1")],
        "managingOrganization": reference("Organization", "org1"),
        "telecom": [{"system": "phone", "value": "555-0101"}],
        "address": [{"city": "Austin", "state": "TX"}],
    }
    heart_rate = {"coding": [{"system": "http://loinc.org", "code": HEART_RATE}], "text": "Heart rate"}
    observations = [
        observation(oid, "p1", code=HEART_RATE, effectiveDateTime=f"2024-0{n}-01T08:00:00Z") | {"code": heart_rate}
        for n, oid in enumerate(P1_RECORDS, start=1)
    ]
    observations[0]["encounter"] = reference("Encounter", "e1")
    glucose = {"coding": [{"system": "http://loinc.org", "code": GLUCOSE}], "text": "Glucose"}
    observations.append(observation("o4", "p2", effectiveDateTime="2024-02-15T08:00:00Z") | {"code": glucose})
    return [
        {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House", "given": ["Greg"]}]},
        {"resourceType": "Organization", "id": "org1", "name": "General Hospital"},
        *people,
        *observations,
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "IMP"},
            "subject": reference("Patient", "p1"),
        },
        {
            "resourceType": "Provenance",
            "id": "prov1",
            "recorded": "2024-01-01T08:00:01Z",
            "target": [reference("Patient", "p1")],
            "agent": [{"who": {"display": "hl7gw"}}],
        },
    ]


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def base_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over the records above, for the whole module, on one database. Made before the autouse
    ``audit_trails_closed`` of the first test (a wider scope comes first), so that fixture does not close
    this app's audit trail after that test: it is closed here, at the end, before the database goes."""
    data_dir = tmp_path_factory.mktemp("fhirpy")
    if request.param == "postgresql":
        database: contextlib.AbstractContextManager[str] = postgres_schema(os.environ["HL7GW_TEST_DATABASE_URL"])
    else:
        database = contextlib.nullcontext(f"sqlite:///{data_dir / 'fhirpy.sqlite3'}")
    with database as url:
        engine = make_engine(url)
        migrate(engine)
        app = create_app(load_settings(data_dir=data_dir, api_tokens=f"{TOKEN}:reader"), engine)
        app.state.store.apply_bundle(transaction(*(put(record) for record in _records())))
        try:
            with ServerThread(app) as server:
                yield f"http://127.0.0.1:{server.port}/fhir"
        finally:
            app.state.audit_trail.close()
            app.state.readiness.close()
            engine.dispose()


@dataclass
class Fhirpy:
    """A fhirpy client, sync or async; ``done`` gives a call's result either way."""

    client: Any
    asynchronous: bool

    def done(self, pending: Any) -> Any:
        """The value of a fhirpy call: as it is (sync), or awaited (async)."""
        if inspect.isawaitable(pending):
            return asyncio.run(_awaited(pending))
        assert not self.asynchronous, "an async call that did not return an awaitable"
        return pending

    def every(self, search: Any) -> list[Any]:
        """What iterating over ``search`` yields (``for`` or ``async for``): every page, by next links."""
        return asyncio.run(_collected(search)) if self.asynchronous else list(search)


async def _awaited(pending: Any) -> Any:
    return await pending


async def _collected(search: AsyncIterable[Any]) -> list[Any]:
    return [resource async for resource in search]


@pytest.fixture(params=["sync", "async"])
def fhirpy(request: pytest.FixtureRequest, base_url: str) -> Fhirpy:
    kind = AsyncFHIRClient if request.param == "async" else SyncFHIRClient
    return Fhirpy(kind(base_url, authorization=f"Bearer {TOKEN}"), request.param == "async")


def ids(resources: list[Any]) -> list[str]:
    return [resource["id"] for resource in resources]


def tags(resource: Any) -> list[str]:
    return [tag["code"] for tag in resource["meta"].get("tag", [])]


# 1. reference(...).to_resource(), client.get(...): read


def test_reference_to_resource(fhirpy: Fhirpy) -> None:
    client = fhirpy.client
    p1 = fhirpy.done(client.reference("Patient", "p1").to_resource())
    assert p1["resourceType"] == "Patient" and p1["id"] == "p1" and p1["name"][0]["family"] == "Moore"
    assert p1.reference == "Patient/p1" and p1["meta"]["versionId"] == "1"
    assert fhirpy.done(client.get("Patient", "p4"))["birthDate"] == "1985-06-30"
    with pytest.raises(ResourceNotFound):
        fhirpy.done(client.reference("Patient", "nobody").to_resource())


# 2. resources(T).search(...).fetch(): one page of matches


def test_search_fetch(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert ids(fhirpy.done(patients.search(identifier=f"{MRN}|MRN2").fetch())) == ["p2"]
    assert ids(fhirpy.done(patients.search(name="john").fetch())) == ["p1", "p3"]
    assert ids(fhirpy.done(patients.search(name=["john", "moore"]).fetch())) == ["p1"]  # repeated: AND
    assert ids(fhirpy.done(patients.search(name="moore,eva").fetch())) == ["p1", "p2"]  # comma: OR
    assert ids(fhirpy.done(patients.search(active=False, gender="female").fetch())) == ["p2", "p6"]
    assert ids(fhirpy.done(patients.search(address_state="TX").fetch())) == ["p1"]  # address-state
    assert fhirpy.done(patients.search(family="nobody").fetch()) == []


# 3. search(birthdate__ge=..., date__lt=datetime): date prefixes


def test_search_date_prefixes(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    born = patients.search(birthdate__ge="1944", birthdate__lt=datetime.date(1964, 1, 1))
    assert ids(fhirpy.done(born.fetch())) == ["p1", "p6"]
    before = patients.search(birthdate__lt=datetime.datetime(1975, 1, 1, tzinfo=datetime.UTC))
    assert ids(fhirpy.done(before.fetch())) == ["p1", "p2", "p6"]
    assert ids(fhirpy.done(patients.search(birthdate__gt="1990-06").fetch())) == ["p5", "p7"]
    since = fhirpy.client.resources("Observation").search(date__ge="2024-02")
    assert ids(fhirpy.done(since.fetch())) == ["o2", "o3", "o4"]
    assert ids(fhirpy.done(patients.search(_lastUpdated__gt="2000-01-01").fetch())) == PATIENTS


# 4. search(name__contains=, family__exact=): string modifiers


def test_search_string_modifiers(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert ids(fhirpy.done(patients.search(name__contains="ive").fetch())) == ["p2"]  # Rivera
    assert ids(fhirpy.done(patients.search(family__contains="O").fetch())) == ["p1", "p5", "p7"]  # mOore, Olsen, yOung
    assert ids(fhirpy.done(patients.search(family__exact="Moore").fetch())) == ["p1"]
    assert fhirpy.done(patients.search(family__exact="moore").fetch()) == []


# 5. search(gender__not=, birthdate__missing=, code__text=): token modifiers and :missing


def test_search_token_modifiers_and_missing(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    # :not also matches resources without the element (p7 has no gender).
    assert ids(fhirpy.done(patients.search(gender__not=["male", "female"]).fetch())) == ["p3", "p7"]
    assert ids(fhirpy.done(patients.search(birthdate__missing=True).fetch())) == ["p3"]
    assert ids(fhirpy.done(patients.search(gender__missing=False, active__missing=True).fetch())) == []
    assert ids(fhirpy.done(patients.search(active__missing=True).fetch())) == ["p7"]
    observations = fhirpy.client.resources("Observation")
    assert ids(fhirpy.done(observations.search(code__text="heart").fetch())) == P1_RECORDS
    assert ids(fhirpy.done(observations.search(code=f"http://loinc.org|{GLUCOSE}").fetch())) == ["o4"]


# 6. search(general_practitioner=reference or resource): reference values


def test_search_by_reference(fhirpy: Fhirpy) -> None:
    client = fhirpy.client
    doctor = client.reference("Practitioner", "dr1")
    assert ids(fhirpy.done(client.resources("Patient").search(general_practitioner=doctor).fetch())) == ["p1"]
    p1 = fhirpy.done(client.reference("Patient", "p1").to_resource())
    assert ids(fhirpy.done(client.resources("Observation").search(patient=p1).fetch())) == P1_RECORDS
    assert ids(fhirpy.done(client.resources("Observation").search(subject="p2").fetch())) == ["o4"]


# 7. search(subject__Patient__name=): chained parameters


def test_search_chained(fhirpy: Fhirpy) -> None:
    observations = fhirpy.client.resources("Observation")
    assert ids(fhirpy.done(observations.search(subject__Patient__name="moore").fetch())) == P1_RECORDS
    assert ids(fhirpy.done(observations.search(patient__identifier=f"{MRN}|MRN2").fetch())) == ["o4"]
    patients = fhirpy.client.resources("Patient")
    assert ids(fhirpy.done(patients.search(general_practitioner__Practitioner__name="house").fetch())) == ["p1"]
    assert ids(fhirpy.done(patients.search(organization__name="general").fetch())) == ["p1"]


# 8. has(...): reverse chains (_has)


def test_has(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert ids(fhirpy.done(patients.has("Observation", "patient", code=GLUCOSE).fetch())) == ["p2"]
    assert ids(fhirpy.done(patients.has("Observation", "patient", code=HEART_RATE).fetch())) == ["p1"]
    nested = patients.has("Encounter", "subject", "Observation", "encounter", date__lt="2024-02")
    assert ids(fhirpy.done(nested.fetch())) == ["p1"]


# 9. sort(...).limit(n).fetch(): _sort (strings, dates, tokens) and _count


def test_sort_and_limit(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    # active: false before true; then the youngest first; no birth date or no active: last.
    assert ids(fhirpy.done(patients.sort("active", "-birthdate").limit(3).fetch())) == ["p2", "p6", "p5"]
    assert ids(fhirpy.done(patients.sort("family").limit(2).fetch())) == ["p6", "p1"]  # Carter, Moore
    newest = fhirpy.client.resources("Observation").search(patient="p1").sort("-date")
    assert ids(fhirpy.done(newest.fetch())) == ["o3", "o2", "o1"]
    assert ids(fhirpy.done(patients.sort("-_id").limit(1).fetch())) == ["p7"]


# 10. fetch_all() and for/async for: every page, following next links


def test_fetch_all_and_iterate(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert ids(fhirpy.done(patients.limit(2).fetch_all())) == PATIENTS  # four pages of 2
    by_birth = ["p1", "p6", "p2", "p4", "p5", "p7", "p3"]  # none: last
    assert ids(fhirpy.every(patients.sort("birthdate").limit(3))) == by_birth
    assert ids(fhirpy.every(patients.sort("active", "-birthdate").limit(2))) == [
        "p2",
        "p6",
        "p5",
        "p4",
        "p1",
        "p3",
        "p7",
    ]
    assert ids(fhirpy.every(patients.search(name="john").limit(1))) == ["p1", "p3"]


# 11. first()


def test_first(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert fhirpy.done(patients.search(name="john").sort("-birthdate").first())["id"] == "p1"
    assert fhirpy.done(patients.sort("-birthdate").first())["id"] == "p7"
    assert fhirpy.done(patients.search(family="nobody").first()) is None


# 12. get(): exactly one


def test_get(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient")
    assert fhirpy.done(patients.search(identifier="MRN4").get())["id"] == "p4"
    assert fhirpy.done(patients.search(active=True, _id="p5").get())["id"] == "p5"
    with pytest.raises(MultipleResourcesFound):
        fhirpy.done(patients.search(name="john").get())
    with pytest.raises(ResourceNotFound):
        fhirpy.done(patients.search(family="nobody").get())


# 13. count()


def test_count(fhirpy: Fhirpy) -> None:
    client = fhirpy.client
    assert fhirpy.done(client.resources("Patient").count()) == len(PATIENTS)
    assert fhirpy.done(client.resources("Patient").search(active=True).count()) == 4
    assert fhirpy.done(client.resources("Observation").search(patient="p1").count()) == 3
    assert fhirpy.done(client.resources("Encounter").search(patient="p2").count()) == 0


# 14. elements(...), elements(..., exclude=True): _elements


def test_elements(fhirpy: Fhirpy) -> None:
    patients = fhirpy.client.resources("Patient").search(_id="p1")
    kept = fhirpy.done(patients.elements("name", "birthDate").fetch())
    assert [set(p) for p in kept] == [{"resourceType", "id", "meta", "name", "birthDate"}]
    assert tags(kept[0]) == [SUBSETTED]
    left_out = fhirpy.done(patients.elements("telecom", "address", "identifier", exclude=True).first())
    assert not {"telecom", "address", "identifier"} & set(left_out)
    assert left_out["name"][0]["family"] == "Moore" and left_out["generalPractitioner"] and left_out["gender"]
    assert tags(left_out) == [SUBSETTED]
    whole = fhirpy.done(patients.first())
    assert {"telecom", "address", "identifier"} <= set(whole) and tags(whole) == []


# 15. include(...) / revinclude(...) with fetch_raw(): _include, _revinclude, :iterate, *


def entries(bundle: Any) -> list[tuple[str, str]]:
    return [
        (entry["search"]["mode"], f"{entry['resource']['resourceType']}/{entry['resource']['id']}")
        for entry in bundle["entry"]
    ]


def test_include_and_revinclude(fhirpy: Fhirpy) -> None:
    client = fhirpy.client
    o1 = client.resources("Observation").search(_id="o1")
    both = o1.include("Observation", "patient").include("Observation", "encounter")
    assert entries(fhirpy.done(both.fetch_raw())) == [
        ("match", "Observation/o1"),
        ("include", "Encounter/e1"),
        ("include", "Patient/p1"),
    ]
    assert ids(fhirpy.done(both.fetch())) == ["o1"]  # fetch() keeps the matches only
    onward = o1.include("Observation", "subject", "Patient").include("Patient", "general-practitioner", iterate=True)
    assert {key for _, key in entries(fhirpy.done(onward.fetch_raw()))} == {
        "Observation/o1",
        "Patient/p1",
        "Practitioner/dr1",
    }
    assert {key for _, key in entries(fhirpy.done(o1.include("*").fetch_raw()))} == {
        "Observation/o1",
        "Encounter/e1",
        "Patient/p1",
    }

    p1 = client.resources("Patient").search(_id="p1")
    assert entries(fhirpy.done(p1.revinclude("Provenance", "target").fetch_raw())) == [
        ("match", "Patient/p1"),
        ("include", "Provenance/prov1"),
    ]
    referring = entries(fhirpy.done(p1.revinclude("*").fetch_raw()))  # no AuditEvent: readers never see them
    assert referring == [
        ("match", "Patient/p1"),
        ("include", "Encounter/e1"),
        *(("include", f"Observation/{oid}") for oid in P1_RECORDS),
        ("include", "Provenance/prov1"),
    ]


# 16. reference(...).execute("$everything", method="get"): an operation


def test_execute_everything(fhirpy: Fhirpy) -> None:
    p1 = fhirpy.client.reference("Patient", "p1")
    bundle = fhirpy.done(p1.execute("$everything", method="get"))
    assert bundle["type"] == "searchset"
    found = entries(bundle)
    assert sorted(found) == sorted(
        [
            ("match", "Patient/p1"),
            ("match", "Encounter/e1"),
            *(("match", f"Observation/{oid}") for oid in P1_RECORDS),
            ("match", "Provenance/prov1"),
            ("include", "Organization/org1"),
            ("include", "Practitioner/dr1"),
        ]
    )
    some = fhirpy.done(p1.execute("$everything", method="get", params={"_type": "Observation", "_count": 2}))
    assert [key for _, key in entries(some)] == ["Observation/o1", "Observation/o2"]
    assert any(link["relation"] == "next" for link in some["link"])
    with pytest.raises(ResourceNotFound):
        fhirpy.done(fhirpy.client.reference("Patient", "nobody").execute("$everything", method="get"))
