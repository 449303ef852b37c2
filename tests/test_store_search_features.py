"""Search features of issue 19 on the store: chains, _has, modifiers, quantities, composites, includes, _type.

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture). Quantity prefixes are checked
against a plain Python oracle with hypothesis.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete as delete_rows
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.db.schema import fhir_search_string
from gateway.store.resources import ResourceStore
from gateway.store.search import ForbiddenType, SearchError
from tests.support.fhir_bundles import access_audit_event, delete, observation, patient, put, transaction
from tests.support.gateway_process import clean_env

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN = "urn:oid:1.2.3.4"


def quantity(value: float | str, code: str, unit: str | None = None) -> dict[str, Any]:
    return {"value": Decimal(str(value)), "unit": unit or code, "system": UCUM, "code": code}


def coded(code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": LOINC, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding]}


ORGANIZATION = {
    "resourceType": "Organization",
    "id": "org1",
    "identifier": [{"system": "urn:orgs", "value": "ORG1"}],
    "name": "General Hospital",
}
TYPED_MRN = {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record number"}
PATIENTS = [
    {
        **patient("p1", "MRN1", family="Müller", birthDate="1970-06-01"),
        "identifier": [{"type": TYPED_MRN, "system": MRN, "value": "MRN1"}],
        "managingOrganization": {"reference": "Organization/org1"},
        "meta": {"tag": [{"system": "urn:tags", "code": "vip"}]},
    },
    patient("p2", "MRN2", family="Smith"),
    patient("p3", "MRN3", family="Doe", birthDate="1980"),
]
OBSERVATIONS = [
    {**observation("o1", "p1"), "code": coded("8867-4", "Heart rate"), "valueQuantity": quantity(72, "/min")},
    {**observation("o2", "p1", "8310-5"), "valueQuantity": quantity("37.5", "Cel", "°C")},
    {**observation("o3", "p2"), "code": coded("8867-4", "Heart rate"), "valueQuantity": quantity(110, "/min")},
    {  # refers to its patient by identifier only (a logical reference)
        **observation("o4", "p3", "1234-5"),
        "code": {"text": "free text code"},
        "subject": {"identifier": {"system": MRN, "value": "MRN3"}},
        "valueString": "positive",
    },
    {**observation("o5", "x", "8867-4"), "subject": {"reference": "Location/loc1"}},
]
LOCATION = {"resourceType": "Location", "id": "loc1", "name": "Ward 7"}
AUDIT = access_audit_event("a1", "p1")


@pytest.fixture
def store(engine: Engine) -> ResourceStore:
    store = ResourceStore(engine)
    resources = [ORGANIZATION, *PATIENTS, *OBSERVATIONS, LOCATION, AUDIT]
    store.apply_bundle(transaction(*(put(resource) for resource in resources)))
    return store


def ids(store: ResourceStore, resource_type: str, **params: Any) -> list[str]:
    return sorted(resource["id"] for resource in store.find(resource_type, params).resources)


# chaining and reverse chaining


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"patient.identifier": f"{MRN}|MRN1"}, ["o1", "o2"]),
        ({"patient.identifier": "MRN2,MRN1"}, ["o1", "o2", "o3"]),
        ({"subject:Patient.name": "muller"}, ["o1", "o2"]),
        ({"subject:Location.name": "ward"}, ["o5"]),
        ({"patient._id": "p2"}, ["o3"]),
        ({"patient.organization.name": "general"}, ["o1", "o2"]),  # two steps
        ({"patient.organization:Organization.identifier": "urn:orgs|ORG1", "code": "8310-5"}, ["o2"]),
        ({"patient.birthdate": "1970"}, ["o1", "o2"]),
        ({"patient.name": "nobody"}, []),
        # checked per candidate (another condition picks the rows)
        ({"_id": "o1,o3", "patient.name": "smith"}, ["o3"]),
        ({"patient": "p1", "patient.organization.name": "general"}, ["o1", "o2"]),
        (
            {"_id": "o1,o2,o3", "patient.organization.name": "general,x", "patient.birthdate:missing": "false"},
            ["o1", "o2"],
        ),
        ({"_id": "o3", "patient._lastUpdated": "gt2000"}, ["o3"]),
    ],
)
def test_chained_parameters(store: ResourceStore, params: dict[str, str], expected: list[str]) -> None:
    assert ids(store, "Observation", **params) == expected


def test_a_chain_through_a_type_the_parameter_cannot_tell_needs_the_type(store: ResourceStore) -> None:
    with pytest.raises(SearchError, match="ambiguous: subject may refer to") as caught:
        store.find("Observation", {"subject.name": ["x"]})
    assert caught.value.code == "invalid"
    assert ids(store, "Observation", **{"subject.birthdate": "1970"}) == ["o1", "o2"]  # only Patient has it


def test_chains_do_not_go_through_deleted_resources(store: ResourceStore) -> None:
    store.apply_bundle(transaction(delete("Patient", "p2"), delete("Observation", "o2")))
    assert ids(store, "Observation", **{"patient.name": "smith"}) == []
    assert ids(store, "Observation", **{"_id": "o3", "patient._id": "p2"}) == []
    assert ids(store, "Patient", **{"_has:Observation:patient:code": "8310-5"}) == []
    assert ids(store, "Patient", **{"_id": "p1", "_has:Observation:patient:_id": "o2"}) == []


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        ("Patient", {"_has:Observation:patient:code": "8867-4"}, ["p1", "p2"]),
        ("Patient", {"_has:Observation:patient:code": "8310-5"}, ["p1"]),
        ("Patient", {"_has:Observation:patient:value-quantity": "gt100"}, ["p2"]),
        ("Patient", {"_has:Observation:subject:code:text": "heart"}, ["p1", "p2"]),
        ("Patient", {"_has:Observation:patient:code": "8867-4", "family": "smi"}, ["p2"]),
        ("Organization", {"_has:Patient:organization:_has:Observation:patient:code": "8310-5"}, ["org1"]),
        ("Organization", {"_has:Patient:organization:family": "smith"}, []),
        ("Location", {"_has:Observation:subject:code": "8867-4"}, ["loc1"]),
        # checked per candidate (another condition picks the rows)
        ("Patient", {"_id": "p1,p2", "_has:Observation:patient:code": "8310-5"}, ["p1"]),
        (
            "Patient",
            {"_has:Observation:patient:code": "8867-4", "_has:Observation:patient:value-quantity": "lt100"},
            ["p1"],
        ),
        ("Patient", {"_id": "p1,p2,p3", "_has:Observation:patient:_lastUpdated": "gt2000"}, ["p1", "p2"]),
    ],
)
def test_reverse_chains(store: ResourceStore, resource_type: str, params: dict[str, str], expected: list[str]) -> None:
    assert ids(store, resource_type, **params) == expected


def test_chains_and_has_through_a_hidden_type_are_forbidden(store: ResourceStore) -> None:
    hidden = frozenset({"AuditEvent"})
    assert ids(store, "Patient", **{"_has:AuditEvent:entity:type": "110112"}) == ["p1"]  # an admin may
    with pytest.raises(ForbiddenType):
        store.find("Patient", {"_has:AuditEvent:entity:type": ["110112"]}, hidden=hidden)
    with pytest.raises(ForbiddenType):
        store.find("Provenance", {"target:AuditEvent._id": ["a1"]}, hidden=hidden)
    with pytest.raises(ForbiddenType):
        store.find("Patient", {"_revinclude": ["AuditEvent:entity"]}, hidden=hidden)
    every = store.find("Patient", {"_id": ["p1"], "_revinclude": ["*"]}, hidden=hidden)  # leaves the hidden type out
    assert every.included and not any(r["resourceType"] == "AuditEvent" for r in every.included)
    assert any(r["resourceType"] == "AuditEvent" for r in store.find("Patient", {"_revinclude": ["*"]}).included)


# modifiers


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        ("Patient", {"birthdate:missing": "true"}, ["p2"]),
        ("Patient", {"birthdate:missing": "false"}, ["p1", "p3"]),
        ("Patient", {"organization:missing": "true", "family": "doe"}, ["p3"]),
        ("Observation", {"value-quantity:missing": "true"}, ["o4", "o5"]),
        ("Observation", {"value-quantity:missing": "false"}, ["o1", "o2", "o3"]),
        ("Observation", {"subject:missing": "true"}, ["o4"]),  # a logical reference is no literal one
        ("Observation", {"patient:missing": "true"}, ["o4", "o5"]),  # o5 refers to a Location
        ("Observation", {"value-string:missing": "false"}, ["o4"]),
        ("Observation", {"code:missing": "true"}, ["o4"]),  # text only: no code
        ("Patient", {"_tag:missing": "false"}, ["p1"]),
        ("Observation", {"code:not": "8867-4"}, ["o2", "o4"]),
        ("Observation", {"code:not": "8867-4,8310-5"}, ["o4"]),
        ("Observation", {"code:not": f"{LOINC}|8310-5", "patient": "p1"}, ["o1"]),
        ("Patient", {"family:exact": "Müller"}, ["p1"]),
        ("Patient", {"family:exact": "muller"}, []),
        ("Patient", {"family:contains": "ULL"}, ["p1"]),
        ("Observation", {"code:text": "heart"}, ["o1", "o3"]),
        ("Observation", {"code:text": "free text"}, ["o4"]),
        ("Observation", {"code:text": "rate"}, []),  # like a string search: from the start
        ("Patient", {"identifier:text": "medical record"}, ["p1"]),
        ("Patient", {"identifier:of-type": f"{V2_0203}|MR|MRN1"}, ["p1"]),
        ("Patient", {"identifier:of-type": f"{V2_0203}|MR|MRN2"}, []),
        ("Patient", {"identifier:of-type": "|MR|MRN1"}, ["p1"]),
        ("Observation", {"subject:identifier": f"{MRN}|MRN3"}, ["o4"]),  # Reference.identifier
        ("Observation", {"patient:identifier": f"{MRN}|MRN1"}, ["o1", "o2"]),  # the target's identifier
        ("Observation", {"subject:identifier": "MRN1,MRN2"}, ["o1", "o2", "o3"]),
        ("Patient", {"organization:identifier": "urn:orgs|ORG1"}, ["p1"]),
        ("Patient", {"_tag": "urn:tags|vip"}, ["p1"]),
        ("Patient", {"_id": "p1,p3"}, ["p1", "p3"]),
        ("Patient", {"_lastUpdated": "gt2000-01-01"}, ["p1", "p2", "p3"]),
        ("Patient", {"_lastUpdated": "lt2000-01-01"}, []),
    ],
)
def test_modifiers(store: ResourceStore, resource_type: str, params: dict[str, str], expected: list[str]) -> None:
    assert ids(store, resource_type, **params) == expected


# quantities and composites


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("72", ["o1"]),
        ("72.0", ["o1"]),
        ("7.2e1", ["o1"]),
        ("gt72", ["o3"]),
        ("ge72", ["o1", "o3"]),
        ("lt72", ["o2"]),
        ("le72", ["o1", "o2"]),
        ("ne72", ["o2", "o3"]),
        ("ap75", ["o1"]),  # within 10%
        ("sa100", ["o3"]),
        ("eb37.5", []),
        ("eb37.6", ["o2"]),
        ("37.5", ["o2"]),
        ("37", []),  # 37 is [36.5, 37.5): 37.5 is outside
        ("4e1", ["o2"]),  # [35, 45)
        ("72|http://unitsofmeasure.org|/min", ["o1"]),
        ("72|http://unitsofmeasure.org|Cel", []),
        ("37.5||Cel", ["o2"]),  # the code
        ("37.5||°C", ["o2"]),  # or the unit
        ("gt0|urn:other|", []),
        ("gt0|http://unitsofmeasure.org|", ["o1", "o2", "o3"]),
        ("lt100||/min,37.5", ["o1", "o2"]),
    ],
)
def test_value_quantity(store: ResourceStore, value: str, expected: list[str]) -> None:
    assert ids(store, "Observation", **{"value-quantity": value}) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"code-value-quantity": f"{LOINC}|8867-4$gt100"}, ["o3"]),
        ({"code-value-quantity": "8867-4$lt100"}, ["o1"]),
        ({"code-value-quantity": "8310-5$gt100"}, []),
        ({"code-value-quantity": "8867-4$gt100,8310-5$37.5||Cel"}, ["o2", "o3"]),
        ({"code-value-quantity": "8867-4$gt100", "patient": "p1"}, []),
        ({"code-value-string": "1234-5$pos"}, []),  # o4's code is text only
        ({"code-value-quantity": "8867-4$gt0", "patient.name": "smith"}, ["o3"]),
    ],
)
def test_composites(store: ResourceStore, params: dict[str, str], expected: list[str]) -> None:
    assert ids(store, "Observation", **params) == expected


def test_the_quantity_index_follows_updates_and_deletes(store: ResourceStore) -> None:
    changed = {**OBSERVATIONS[0], "valueQuantity": quantity(130, "/min")}
    store.apply_bundle(transaction(put(changed), delete("Observation", "o3")))
    assert ids(store, "Observation", **{"value-quantity": "gt100"}) == ["o1"]
    assert ids(store, "Observation", **{"value-quantity": "72"}) == []
    store.reindex("Observation")
    assert ids(store, "Observation", **{"value-quantity": "gt100"}) == ["o1"]


STORED = [
    Decimal(v) for v in ("-12.5", "-1", "0", "0.05", "0.1", "1", "1.5", "2.45", "2.5", "9.99", "10", "99.5", "100")
]


def oracle(prefix: str, text: str, value: Decimal) -> bool:
    """search.html#number and #prefix, for a stored value without a range of its own."""
    number = Decimal(text)
    half = Decimal(5).scaleb(number.as_tuple().exponent - 1)  # type: ignore[operator]
    low, high = number - half, number + half
    margin = max(abs(number) / 10, half)
    return {
        "eq": low <= value < high,
        "ne": not low <= value < high,
        "gt": value > number,
        "lt": value < number,
        "ge": value >= number,
        "le": value <= number,
        "sa": value >= high,
        "eb": value < low,
        "ap": number - margin <= value <= number + margin,
    }[prefix]


@pytest.fixture
def numbers(engine: Engine) -> ResourceStore:
    store = ResourceStore(engine)
    observations = [
        {**observation(f"n{n}", "p1"), "valueQuantity": quantity(str(value), "mg")} for n, value in enumerate(STORED)
    ]
    store.apply_bundle(transaction(*(put(o) for o in observations)))
    return store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
    number=st.one_of(
        st.sampled_from(STORED),
        st.decimals(min_value=-150, max_value=150, places=2, allow_nan=False, allow_infinity=False),
        st.integers(min_value=-150, max_value=150).map(Decimal),
    ),
)
@example(prefix="ap", number=Decimal("0.1"))  # 0.1 - 10% in floats is above 0.05: found by hypothesis
def test_quantity_prefixes_match_the_oracle(numbers: ResourceStore, prefix: str, number: Decimal) -> None:
    text = str(number)
    found = ids(numbers, "Observation", **{"value-quantity": f"{prefix}{text}|{UCUM}|mg"})
    expected = sorted(f"n{n}" for n, value in enumerate(STORED) if oracle(prefix, text, value))
    assert found == expected, (prefix, text)


# includes


def included(store: ResourceStore, resource_type: str, params: dict[str, list[str]]) -> list[str]:
    result = store.find(resource_type, params)
    return sorted(f"{r['resourceType']}/{r['id']}" for r in result.included)


def test_include_star_follows_every_reference_parameter(store: ResourceStore) -> None:
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"}}
    store.apply_bundle(
        transaction(put(encounter), put({**OBSERVATIONS[0], "encounter": {"reference": "Encounter/e1"}}))
    )
    assert included(store, "Observation", {"_id": ["o1"], "_include": ["*"]}) == ["Encounter/e1", "Patient/p1"]
    assert included(store, "Observation", {"_id": ["o1"], "_include": ["Observation:*"]}) == [
        "Encounter/e1",
        "Patient/p1",
    ]
    assert included(store, "Observation", {"_id": ["o1"], "_include": ["Observation:*:Encounter"]}) == ["Encounter/e1"]


def test_iterate_follows_the_included_resources(store: ResourceStore) -> None:
    once = {"_id": ["o1"], "_include": ["Observation:patient", "Patient:organization"]}
    with pytest.raises(SearchError, match="can only include through Observation parameters"):
        store.find("Observation", once)
    iterated = {"_id": ["o1"], "_include": ["Observation:patient"], "_include:iterate": ["Patient:organization"]}
    assert included(store, "Observation", iterated) == ["Organization/org1", "Patient/p1"]
    reverse = {"_id": ["org1"], "_revinclude": ["Patient:organization"], "_revinclude:iterate": ["Observation:patient"]}
    assert included(store, "Organization", reverse) == ["Observation/o1", "Observation/o2", "Patient/p1"]
    recurse = {"_id": ["o1"], "_include:recurse": ["Observation:patient", "Patient:organization"]}
    assert included(store, "Observation", recurse) == ["Organization/org1", "Patient/p1"]


# across types


def test_a_search_across_types(store: ResourceStore) -> None:
    found = store.find_across(["Patient", "Observation"], {"_id": ["p1,o1,org1"]})
    assert [(r["resourceType"], r["id"]) for r in found.resources] == [("Observation", "o1"), ("Patient", "p1")]
    assert found.total == 2
    tagged = store.find_across(None, {"_tag": ["urn:tags|vip"]}, hidden=frozenset({"AuditEvent"}))
    assert [r["id"] for r in tagged.resources] == ["p1"]
    recent = store.find_across(["Organization", "Location"], {"_lastUpdated": ["gt2000"], "_sort": ["-_lastUpdated"]})
    assert sorted(r["id"] for r in recent.resources) == ["loc1", "org1"]
    with pytest.raises(SearchError, match="takes only"):
        store.find_across(["Patient"], {"family": ["x"]})
    with pytest.raises(ForbiddenType):
        store.find_across(["AuditEvent"], {}, hidden=frozenset({"AuditEvent"}))
    hidden = store.find_across(None, {"_id": ["a1,p1"]}, hidden=frozenset({"AuditEvent"}))
    assert [r["id"] for r in hidden.resources] == ["p1"]


def test_pages_across_types_follow_type_and_id(store: ResourceStore) -> None:
    seen: list[str] = []
    params: dict[str, list[str]] = {"_count": ["2"]}
    while True:
        page = store.find_across(["Patient", "Observation", "Organization"], params)
        seen += [f"{r['resourceType']}/{r['id']}" for r in page.resources]
        if not page.next_cursor:
            break
        params = {"_count": ["2"], "_cursor": [page.next_cursor]}
    expected = [f"Observation/o{n}" for n in range(1, 6)] + ["Organization/org1"] + [f"Patient/p{n}" for n in (1, 2, 3)]
    assert seen == expected


def test_hl7gw_reindex_makes_the_rows_of_resources_stored_before(database_url: str, tmp_path: Path) -> None:
    """Resources written by a release without the :text rows are found by :text after ``hl7gw reindex``."""
    engine = make_engine(database_url)
    try:
        migrate(engine)
        store = ResourceStore(engine)
        store.apply_bundle(transaction(*(put(resource) for resource in OBSERVATIONS)))
        with engine.begin() as conn:  # as an older release left them: no rows for :text
            conn.execute(delete_rows(fhir_search_string).where(fhir_search_string.c.param == "code:text"))
        assert ids(store, "Observation", **{"code:text": "heart"}) == []
        command = [sys.executable, "-m", "gateway.cli", "reindex", "--type", "Observation"]
        env = clean_env(HL7GW_DATA_DIR=str(tmp_path), HL7GW_DATABASE_URL=database_url)
        done = subprocess.run(command, capture_output=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        assert b"reindexed 5 resources of type Observation" in done.stdout
        assert ids(store, "Observation", **{"code:text": "heart"}) == ["o1", "o3"]
    finally:
        engine.dispose()
