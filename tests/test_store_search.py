"""ResourceStore.search: token, string, date, reference parameters, modifiers, paging, errors."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway.store.resources import ResourceStore
from gateway.store.search import MAX_COUNT, SearchError, UnknownResourceType
from tests.support.fhir_bundles import delete, observation, patient, put, transaction

PATIENTS = [
    patient("p1", "MRN1", family="Müller", given="Anna", birthDate="1970-06-01", gender="female"),
    patient("p2", "MRN2", family="Muller", given="Bert", birthDate="1970-06-15", gender="male"),
    patient("p3", "MRN3", family="Smith", given="Anne", birthDate="1971", gender="female"),
    {
        "resourceType": "Patient",
        "id": "p4",
        "identifier": [{"value": "MRN1"}, {"system": "urn:other", "value": "X-9"}],
        "name": [{"text": "Dr. Chloé O'Brien", "family": "O'Brien", "given": ["Chloé", "Marie"], "prefix": ["Dr."]}],
    },
]

# Around the search day 2020-01-01 = [S, E): each value's range is [low, high).
OBSERVATIONS = [
    observation("o1", "p1", effectiveDateTime="2020-01-01T10:00:00Z"),  # inside the day
    observation("o2", "p1", effectiveDateTime="2020-01-02T00:00:00Z"),  # starts at E
    observation("o3", "p1", effectiveDateTime="2019-12-31T23:59:59Z"),  # ends at S
    observation(
        "o4", "p2", code="1234-5", effectivePeriod={"start": "2019-12-31T12:00:00Z", "end": "2020-01-01T12:00:00Z"}
    ),
    observation("o5", "p2", code="1234-5", effectiveDateTime="2020-01"),  # the whole month
    observation("o6", "p3"),  # no date
]

ENCOUNTER = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2020-01-01T08:00:00Z"},
}
REPORT = {
    "resourceType": "DiagnosticReport",
    "id": "r1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
    "subject": {"reference": "http://example.org/fhir/Patient/p2/_history/1"},
    "result": [{"reference": "Observation/o4"}, {"reference": "Observation/o5"}],
}
GROUP_SUBJECT = {**observation("o7", "x"), "subject": {"reference": "Group/g1"}}


@pytest.fixture
def store(engine: Engine) -> ResourceStore:
    store = ResourceStore(engine)
    resources = [*PATIENTS, *OBSERVATIONS, ENCOUNTER, REPORT, GROUP_SUBJECT]
    store.apply_bundle(transaction(*(put(resource) for resource in resources)))
    return store


def ids(store: ResourceStore, resource_type: str, **params: Any) -> list[str]:
    return sorted(resource["id"] for resource in store.search(resource_type, params))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("urn:oid:1.2.3.4|MRN1", ["p1"]),  # system|code
        ("MRN1", ["p1", "p4"]),  # code in any system, or none
        ("|MRN1", ["p4"]),  # code with no system
        ("urn:other|", ["p4"]),  # any code in a system
        ("urn:other|X-9", ["p4"]),
        ("urn:other|MRN1", []),
        ("mrn1", []),  # tokens are case-sensitive
        ("MRN2,MRN3", ["p2", "p3"]),  # comma: OR
    ],
)
def test_token_identifier(store: ResourceStore, value: str, expected: list[str]) -> None:
    assert ids(store, "Patient", identifier=[value]) == expected


def test_repeated_parameters_are_anded(store: ResourceStore) -> None:
    assert ids(store, "Patient", identifier=["MRN1", "urn:other|X-9"]) == ["p4"]
    assert ids(store, "Patient", identifier=["MRN1"], gender=["female"]) == ["p1"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"family": ["mul"]}, ["p1", "p2"]),  # prefix, case and accents ignored
        ({"family": ["MÜLLER"]}, ["p1", "p2"]),
        ({"family": ["üller"]}, []),  # a prefix, not a substring
        ({"family:contains": ["ULLE"]}, ["p1", "p2"]),
        ({"family:exact": ["Müller"]}, ["p1"]),
        ({"family:exact": ["müller"]}, []),
        ({"given": ["ann"]}, ["p1", "p3"]),
        ({"given": ["chloe"]}, ["p4"]),
        ({"given": ["marie"]}, ["p4"]),
        ({"name": ["o'b"]}, ["p4"]),
        ({"name": ["dr"]}, ["p4"]),  # prefix and text are part of name
        ({"name": ["smith,bert"]}, ["p2", "p3"]),
        ({"name": ["jane"]}, []),
    ],
)
def test_string_parameters(store: ResourceStore, params: dict[str, list[str]], expected: list[str]) -> None:
    assert ids(store, "Patient", **params) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970", ["p1", "p2"]),
        ("1970-06", ["p1", "p2"]),
        ("1970-06-01", ["p1"]),
        ("eq1970-06-15", ["p2"]),
        ("ge1970-06-02", ["p2", "p3"]),
        ("gt1970-06-15", ["p3"]),
        ("lt1970-06-15", ["p1"]),
        ("le1970-06-15", ["p1", "p2"]),
        ("ne1970-06", ["p3"]),
        ("lt1971-06", ["p1", "p2", "p3"]),  # 1971 starts before June 1971
        ("ge1971-06", ["p3"]),  # and ends after it
        ("eq1971-06", []),  # but is not inside it
    ],
)
def test_birthdate_partial_dates_and_prefixes(store: ResourceStore, value: str, expected: list[str]) -> None:
    assert ids(store, "Patient", birthdate=[value]) == expected


def test_gender_and_id(store: ResourceStore) -> None:
    assert ids(store, "Patient", gender=["female"]) == ["p1", "p3"]
    assert ids(store, "Patient", _id=["p2,p4"]) == ["p2", "p4"]
    assert ids(store, "Patient", _id=["p2"], gender=["female"]) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-01-01", ["o1"]),  # eq: the value lies inside the day
        ("eq2020-01-01", ["o1"]),
        ("ne2020-01-01", ["o2", "o3", "o4", "o5"]),
        ("gt2020-01-01", ["o2", "o5"]),  # goes on after the day
        ("lt2020-01-01", ["o3", "o4"]),  # starts before the day
        ("ge2020-01-01", ["o1", "o2", "o5"]),
        ("le2020-01-01", ["o1", "o3", "o4"]),
        ("sa2020-01-01", ["o2"]),  # starts after the day ends
        ("eb2020-01-01", ["o3"]),  # ends before the day starts
        ("2020", ["o1", "o2", "o5"]),
        ("2020-01", ["o1", "o2", "o5"]),
        ("ge2020-01-01T10:00:00Z", ["o1", "o2", "o4", "o5"]),
        ("ge2020-01-01T11:00:00+01:00", ["o1", "o2", "o4", "o5"]),  # the same instant
        ("ge2020-01-01T11:00:00 01:00", ["o1", "o2", "o4", "o5"]),  # "+" decoded to a space by a URL
        ("lt2020-01-01T10:00", ["o3", "o4", "o5"]),  # minutes precision
        ("ge2021,lt2019-12-31T23:59:59.5Z", ["o3", "o4"]),
        (">=2020-01-01", ["o1", "o2", "o5"]),  # DSTU1 comparators, as fhirclient sends them
        ("<2020-01-01", ["o3", "o4"]),
        ("<=2020-01-01", ["o1", "o3", "o4"]),
        (">2020-01-01", ["o2", "o5"]),
    ],
)
def test_observation_date_prefixes(store: ResourceStore, value: str, expected: list[str]) -> None:
    assert ids(store, "Observation", date=[value]) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"patient": ["p1"]}, ["o1", "o2", "o3"]),
        ({"patient": ["Patient/p1"]}, ["o1", "o2", "o3"]),
        ({"patient": ["http://elsewhere/fhir/Patient/p1"]}, ["o1", "o2", "o3"]),
        ({"subject": ["Patient/p2"]}, ["o4", "o5"]),
        ({"subject:Patient": ["p2"]}, ["o4", "o5"]),
        ({"subject": ["g1"]}, ["o7"]),  # subject: any type
        ({"subject": ["Group/g1"]}, ["o7"]),
        ({"patient": ["g1"]}, []),  # patient: Patient targets only
        ({"patient": ["p1,p3"]}, ["o1", "o2", "o3", "o6"]),
        ({"patient": ["p1"], "date": ["ge2020-01-01"]}, ["o1", "o2"]),
        ({"patient": ["p2"], "code": ["http://loinc.org|1234-5"]}, ["o4", "o5"]),
        ({"code": ["8867-4"]}, ["o1", "o2", "o3", "o6", "o7"]),
        ({"code": ["http://loinc.org|"], "date": ["sa2020-01-01"]}, ["o2"]),
    ],
)
def test_observation_references_and_codes(
    store: ResourceStore, params: dict[str, list[str]], expected: list[str]
) -> None:
    assert ids(store, "Observation", **params) == expected


def test_encounter_and_diagnostic_report(store: ResourceStore) -> None:
    assert ids(store, "Encounter", patient=["p1"]) == ["e1"]
    assert ids(store, "Encounter", subject=["Patient/p1"], date=["ge2020-06"]) == ["e1"]  # the period is open-ended
    assert ids(store, "Encounter", date=["lt2020-01-01T08:00:00Z"]) == []
    assert ids(store, "Encounter", **{"class": ["IMP"]}) == ["e1"]
    assert ids(store, "DiagnosticReport", patient=["p2"]) == ["r1"]  # an absolute, versioned reference
    assert ids(store, "DiagnosticReport", result=["Observation/o5"]) == ["r1"]
    assert ids(store, "DiagnosticReport", patient=["p1"]) == []


def test_last_updated(store: ResourceStore) -> None:
    assert len(ids(store, "Patient", _lastUpdated=["ge2000"])) == 4
    assert ids(store, "Patient", _lastUpdated=["lt2000"]) == []
    stamp = store.read("Patient", "p1")["meta"]["lastUpdated"]  # type: ignore[index]
    assert "p1" in ids(store, "Patient", _lastUpdated=[stamp])


def test_updates_and_deletes_change_what_is_found(store: ResourceStore) -> None:
    store.apply_bundle(transaction(put(patient("p1", "MRN1-NEW", family="Neumann")), delete("Observation", "o1")))

    assert ids(store, "Patient", identifier=["urn:oid:1.2.3.4|MRN1"]) == []
    assert ids(store, "Patient", identifier=["MRN1-NEW"]) == ["p1"]
    assert ids(store, "Patient", family=["mul"]) == ["p2"]
    assert ids(store, "Observation", patient=["p1"]) == ["o2", "o3"]


def test_count_and_total(store: ResourceStore) -> None:
    page = store.find("Observation", {"_count": ["2"]})
    assert page.total == 7 and page.count == 2
    assert [r["id"] for r in page.resources] == ["o1", "o2"]  # ordered by id unless _sort says otherwise
    assert store.find("Observation", {"_count": ["0"]}).resources == []
    assert store.find("Observation", {"_count": ["0"]}).total == 7
    assert store.find("Observation", {"_count": ["100000"]}).count == MAX_COUNT


def test_empty_values_are_ignored(store: ResourceStore) -> None:
    assert len(ids(store, "Patient", identifier=[""], family=[","])) == 4


@pytest.mark.parametrize(
    ("resource_type", "params", "message", "code"),
    [
        ("Patient", {"nickname": ["x"]}, "unknown search parameter 'nickname' for Patient", "not-supported"),
        ("Patient", {"family:missing": ["maybe"]}, "family:missing takes true or false", "invalid"),
        ("Patient", {"identifier:below": ["x"]}, "modifier :below is not supported", "not-supported"),
        ("Patient", {"family:not": ["x"]}, "modifier :not is not supported", "not-supported"),
        ("Patient", {"birthdate:missing": ["true,false"]}, "takes true or false", "invalid"),
        ("Patient", {"birthdate": ["1970-13"]}, "is not a valid date", "invalid"),
        ("Patient", {"birthdate": ["yesterday"]}, "is not supported", "invalid"),
        ("Patient", {"birthdate": ["ap1970"]}, "date prefix 'ap' is not supported", "invalid"),
        ("Patient", {"birthdate": ["19700601"]}, "is not a FHIR date", "invalid"),
        ("Patient", {"_count": ["-1"]}, "_count must be one non-negative integer", "invalid"),
        ("Patient", {"_count": ["1", "2"]}, "_count must be one non-negative integer", "invalid"),
        ("Observation", {"patient": ["Group/g1"]}, "'patient' refers to Patient, not Group", "invalid"),
        ("Observation", {"patient:Group": ["g1"]}, "not a resource type 'patient' can refer to", "invalid"),
        ("Observation", {"subject": ["a/b/c"]}, "is not a reference", "invalid"),
        ("Observation", {"subject.name": ["x"]}, "is ambiguous: subject may refer to", "invalid"),
        ("Observation", {"subject:Group.name": ["x"]}, "never refers to 'Group'", "invalid"),
        ("Observation", {"code.name": ["x"]}, "'code' is not a reference search parameter", "not-supported"),
        ("Observation", {"patient.shoe": ["x"]}, "has a search parameter 'shoe'", "not-supported"),
        ("Observation", {"patient.link:Patient.link:Patient.link:Patient.name": ["x"]}, "at most 3 steps", "invalid"),
        ("Patient", {"_has:Observation:code:code": ["x"]}, "no reference parameter 'code'", "invalid"),
        ("Patient", {"_has:Observation:patient": ["x"]}, "is not _has:[type]", "invalid"),
        ("Patient", {"_has:Foo:patient:code": ["x"]}, "'Foo' is not supported", "not-supported"),
        ("Observation", {"value-quantity": ["big"]}, "is not a number", "invalid"),
        ("Observation", {"value-quantity": ["5|mg"]}, "is not [number]", "invalid"),
        ("Observation", {"code-value-quantity": ["8867-4"]}, "is not [code]$[value-quantity]", "invalid"),
        ("Observation", {"identifier:of-type": ["MR|1"]}, "is not [system]|[code]|[value]", "invalid"),
        ("Patient", {"_sort": ["organization"]}, "cannot sort by 'organization'", "not-supported"),
        ("Patient", {"_summary": ["true"]}, "_summary=true is not supported", "not-supported"),
        ("Patient", {"_total": ["maybe"]}, "_total must be one of", "invalid"),
        ("Patient", {"_include:deep": ["Patient:link"]}, "modifier :deep is not supported", "not-supported"),
        ("Patient", {"_include": ["Observation:patient"]}, "can only include through Patient parameters", "invalid"),
        ("Patient", {"_cursor": ["garbage!"]}, "_cursor is not a page token", "invalid"),
    ],
)
def test_bad_searches_raise_search_error(
    store: ResourceStore, resource_type: str, params: dict[str, list[str]], message: str, code: str
) -> None:
    with pytest.raises(SearchError) as caught:
        store.search(resource_type, params)
    assert message in str(caught.value)
    assert caught.value.code == code


def test_unknown_resource_type(store: ResourceStore) -> None:
    with pytest.raises(UnknownResourceType, match="'Foo' is not supported"):
        store.search("Foo", {})


def test_searches_at_the_value_and_parameter_limits_run(store: ResourceStore) -> None:
    from gateway.store.search import MAX_CONDITIONS, MAX_VALUES

    values = ",".join([f"nobody{n}" for n in range(MAX_VALUES - 1)] + ["MRN1"])
    assert "p1" in {r["id"] for r in store.find("Patient", {"identifier": [values]}).resources}
    assert store.find("Patient", {"family": [values]}).resources == []
    assert store.find("Patient", {"family": [f"x{n}" for n in range(MAX_CONDITIONS)]}).resources == []
    with pytest.raises(SearchError, match=f"at most {MAX_VALUES}"):
        store.find("Patient", {"identifier": [values + ",one-more"]})
    with pytest.raises(SearchError, match=f"at most {MAX_CONDITIONS}"):
        store.find("Patient", {"family": [f"x{n}" for n in range(MAX_CONDITIONS + 1)]})
