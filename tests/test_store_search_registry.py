"""Every resource type the gateway produces is searchable by the R4 parameters clients expect of it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway.store.resources import ResourceStore
from gateway.store.search_registry import SEARCH_PARAMETERS
from tests.support.fhir_bundles import patient, put, transaction

PATIENT = {"reference": "Patient/p1"}
ENCOUNTER = {"reference": "Encounter/e1"}
LOINC = "http://loinc.org"


def concept(code: str, system: str = "urn:test") -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def ident(value: str) -> list[dict[str, str]]:
    return [{"system": "urn:id", "value": value}]


# One resource per type, shaped as in R4, with the elements the common parameters read.
RESOURCES: dict[str, dict[str, Any]] = {
    "RelatedPerson": {
        "patient": PATIENT,
        "identifier": ident("rp"),
        "name": [{"family": "Roe"}],
        "telecom": [{"system": "phone", "value": "555-1"}, {"system": "email", "value": "a@b.c"}],
    },
    "Encounter": {
        "subject": PATIENT,
        "identifier": ident("visit"),
        "status": "in-progress",
        "class": {"system": "urn:class", "code": "IMP"},
        "period": {"start": "2024-03-01T08:00:00Z"},
        "participant": [{"individual": {"reference": "Practitioner/dr1"}}],
        "location": [{"location": {"reference": "Location/ward"}}],
    },
    "EpisodeOfCare": {
        "patient": PATIENT,
        "identifier": ident("eoc"),
        "status": "active",
        "period": {"start": "2024-01-01", "end": "2024-06-30"},
    },
    "Location": {
        "identifier": ident("ward"),
        "name": "Ward 7",
        "alias": ["Station Sieben"],
        "status": "active",
        "address": {"city": "Zürich", "postalCode": "8000"},
    },
    "Practitioner": {
        "identifier": ident("dr1"),
        "name": [{"family": "House", "given": ["Gregory"]}],
        "telecom": [{"system": "email", "value": "house@example.org"}],
    },
    "PractitionerRole": {
        "identifier": ident("role"),
        "practitioner": {"reference": "Practitioner/dr1"},
        "organization": {"reference": "Organization/org"},
        "code": [concept("doctor")],
    },
    "Organization": {"identifier": ident("org"), "name": "General Hospital", "alias": ["GH"], "active": True},
    "AllergyIntolerance": {
        "patient": PATIENT,
        "identifier": ident("alg"),
        "code": concept("peanut"),
        "clinicalStatus": concept("active"),
        "category": ["food"],
        "recordedDate": "2024-02-02",
    },
    "Condition": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("cond"),
        "code": concept("I10"),
        "category": [concept("problem-list-item")],
        "clinicalStatus": concept("active"),
        "onsetDateTime": "2023-05-05",
        "recordedDate": "2024-03-01",
    },
    "Procedure": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("proc"),
        "status": "completed",
        "code": concept("appendectomy"),
        "category": concept("surgical"),
        "performedPeriod": {"start": "2024-03-02T10:00:00Z", "end": "2024-03-02T11:00:00Z"},
    },
    "Coverage": {
        "beneficiary": PATIENT,
        "identifier": ident("cov"),
        "status": "active",
        "payor": [{"reference": "Organization/org"}],
        "class": [{"type": concept("group"), "value": "G-1"}],
    },
    "Account": {
        "subject": [PATIENT],
        "identifier": ident("acct"),
        "status": "active",
        "name": "Stay 2024",
        "servicePeriod": {"start": "2024-03-01"},
    },
    "ServiceRequest": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("order"),
        "status": "active",
        "intent": "order",
        "code": concept("CBC", LOINC),
        "category": [concept("lab")],
        "authoredOn": "2024-03-01T09:00:00Z",
        "occurrenceDateTime": "2024-03-02",
    },
    "DiagnosticReport": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("rep"),
        "status": "final",
        "code": concept("CBC", LOINC),
        "category": [concept("LAB")],
        "effectiveDateTime": "2024-03-02T12:00:00Z",
        "issued": "2024-03-02T13:00:00Z",
        "result": [{"reference": "Observation/obs"}],
    },
    "Observation": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("obs"),
        "status": "final",
        "code": concept("718-7", LOINC),
        "category": [concept("laboratory")],
        "effectiveDateTime": "2024-03-02T12:00:00Z",
        "valueCodeableConcept": concept("high"),
    },
    "Specimen": {
        "subject": PATIENT,
        "identifier": ident("spec"),
        "status": "available",
        "type": concept("blood"),
        "accessionIdentifier": {"system": "urn:acc", "value": "A1"},
        "collection": {"collectedDateTime": "2024-03-02T08:00:00Z"},
    },
    "MedicationRequest": {
        "subject": PATIENT,
        "encounter": ENCOUNTER,
        "identifier": ident("rx"),
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": concept("aspirin"),
        "category": [concept("inpatient")],
        "authoredOn": "2024-03-01",
    },
    "MedicationAdministration": {
        "subject": PATIENT,
        "context": ENCOUNTER,
        "identifier": ident("mar"),
        "status": "completed",
        "medicationCodeableConcept": concept("aspirin"),
        "effectiveDateTime": "2024-03-01T20:00:00Z",
    },
    "MedicationDispense": {
        "subject": PATIENT,
        "context": ENCOUNTER,
        "identifier": ident("disp"),
        "status": "completed",
        "medicationCodeableConcept": concept("aspirin"),
        "whenHandedOver": "2024-03-01T18:00:00Z",
    },
    "Immunization": {
        "patient": PATIENT,
        "identifier": ident("imm"),
        "status": "completed",
        "vaccineCode": concept("flu"),
        "occurrenceDateTime": "2023-10-10",
        "lotNumber": "LOT-9",
    },
    "Appointment": {
        "identifier": ident("appt"),
        "status": "booked",
        "start": "2024-04-01T09:00:00Z",
        "participant": [
            {"actor": PATIENT, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr1"}, "status": "accepted"},
        ],
    },
    "DocumentReference": {
        "subject": PATIENT,
        "masterIdentifier": {"system": "urn:doc", "value": "D1"},
        "status": "current",
        "type": concept("discharge"),
        "category": [concept("summary")],
        "date": "2024-03-03T10:00:00Z",
        "context": {"encounter": [ENCOUNTER]},
        "content": [{"attachment": {"contentType": "text/plain"}}],
    },
    "Device": {
        "identifier": [{"system": "urn:dev", "value": "D1"}],
        "manufacturer": "Orion Health",
        "deviceName": [{"name": "Rhapsody", "type": "manufacturer-name"}],
        "modelNumber": "RAP234",
        "version": [{"value": "2.4.3"}],
    },
    "MessageHeader": {
        "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "A01"},
        "source": {"name": "LAB", "endpoint": "mllp://lab"},
        "focus": [ENCOUNTER],
    },
    "Provenance": {
        "target": [PATIENT, ENCOUNTER],
        "recorded": "2024-03-01T08:00:01Z",
        "agent": [{"who": {"reference": "Organization/org"}}],
    },
    # As gateway/store/audit.py writes it, plus the references R4's own parameters search.
    "AuditEvent": {
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"},
        "subtype": [{"system": "urn:hl7gw:operator-action", "code": "replay"}],
        "action": "E",
        "recorded": "2024-03-01T08:00:02Z",
        "outcome": "0",
        "agent": [
            {
                "who": {"reference": "Practitioner/dr1", "display": "alice"},
                "altId": "alice",
                "name": "Alice Admin",
                "role": [concept("admin", "urn:hl7gw:api-role")],
                "requestor": True,
            }
        ],
        "source": {"site": "gw-host", "observer": {"reference": "Device/gw"}},
        "entity": [
            {
                "what": {"identifier": {"system": "urn:hl7gw:dead-letter", "value": "42"}},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "20"},
                "name": "replay job",
            },
            {"what": {"reference": "Patient/p1"}},
        ],
    },
}

# type -> searches that must find the resource above (and one that must not, as a control).
SEARCHES: dict[str, list[dict[str, str]]] = {
    "Patient": [
        {
            "identifier": "urn:oid:1.2.3.4|MRN1",
            "family": "doe",
            "given": "jan",
            "name": "doe",
            "birthdate": "1970",
            "gender": "female",
            "phone": "555-0",
            "address-city": "bern",
        }
    ],
    "RelatedPerson": [{"patient": "p1", "identifier": "urn:id|rp", "name": "roe", "phone": "555-1", "email": "a@b.c"}],
    "Encounter": [
        {
            "patient": "p1",
            "subject": "Patient/p1",
            "identifier": "visit",
            "status": "in-progress",
            "class": "IMP",
            "date": "ge2024-03-01",
            "practitioner": "dr1",
            "location": "Location/ward",
        }
    ],
    "EpisodeOfCare": [{"patient": "p1", "identifier": "eoc", "status": "active", "date": "ge2024-03"}],
    "Location": [{"identifier": "ward", "name": "station", "status": "active", "address-city": "zurich"}],
    "Practitioner": [{"identifier": "dr1", "family": "house", "given": "greg", "email": "house@example.org"}],
    "PractitionerRole": [{"identifier": "role", "practitioner": "dr1", "organization": "org", "role": "doctor"}],
    "Organization": [{"identifier": "org", "name": "gh", "active": "true"}],
    "AllergyIntolerance": [
        {
            "patient": "p1",
            "identifier": "alg",
            "code": "peanut",
            "clinical-status": "active",
            "category": "food",
            "date": "2024-02-02",
        }
    ],
    "Condition": [
        {
            "patient": "p1",
            "subject": "Patient/p1",
            "encounter": "e1",
            "identifier": "cond",
            "code": "I10",
            "category": "problem-list-item",
            "clinical-status": "active",
            "onset-date": "lt2024",
            "recorded-date": "2024-03-01",
        }
    ],
    "Procedure": [
        {
            "patient": "p1",
            "encounter": "e1",
            "identifier": "proc",
            "code": "appendectomy",
            "status": "completed",
            "category": "surgical",
            "date": "2024-03-02",
        }
    ],
    "Coverage": [
        {
            "patient": "p1",
            "beneficiary": "p1",
            "identifier": "cov",
            "status": "active",
            "payor": "org",
            "class-value": "g-1",
        }
    ],
    "Account": [{"patient": "p1", "subject": "p1", "identifier": "acct", "status": "active", "period": "ge2024"}],
    "ServiceRequest": [
        {
            "patient": "p1",
            "encounter": "e1",
            "identifier": "order",
            "code": f"{LOINC}|CBC",
            "category": "lab",
            "status": "active",
            "intent": "order",
            "authored": "2024-03-01",
            "occurrence": "2024-03-02",
        }
    ],
    "DiagnosticReport": [
        {
            "patient": "p1",
            "subject": "p1",
            "encounter": "e1",
            "identifier": "rep",
            "code": f"{LOINC}|CBC",
            "category": "LAB",
            "status": "final",
            "date": "2024-03-02",
            "issued": "ge2024-03-02T13:00:00Z",
            "result": "Observation/obs",
        }
    ],
    "Observation": [
        {
            "patient": "p1",
            "subject": "p1",
            "encounter": "Encounter/e1",
            "identifier": "obs",
            "code": f"{LOINC}|718-7",
            "category": "laboratory",
            "status": "final",
            "date": "ge2024-03-02T12:00:00Z",
            "value-concept": "high",
        }
    ],
    "Specimen": [
        {
            "patient": "p1",
            "identifier": "spec",
            "type": "blood",
            "status": "available",
            "collected": "2024-03-02",
            "accession": "urn:acc|A1",
        }
    ],
    "MedicationRequest": [
        {
            "patient": "p1",
            "encounter": "e1",
            "identifier": "rx",
            "code": "aspirin",
            "status": "active",
            "intent": "order",
            "category": "inpatient",
            "authoredon": "2024-03",
        }
    ],
    "MedicationAdministration": [
        {
            "patient": "p1",
            "context": "e1",
            "identifier": "mar",
            "code": "aspirin",
            "status": "completed",
            "effective-time": "2024-03-01",
        }
    ],
    "MedicationDispense": [
        {
            "patient": "p1",
            "context": "e1",
            "identifier": "disp",
            "code": "aspirin",
            "status": "completed",
            "whenhandedover": "2024-03-01",
        }
    ],
    "Immunization": [
        {
            "patient": "p1",
            "identifier": "imm",
            "vaccine-code": "flu",
            "status": "completed",
            "date": "2023-10",
            "lot-number": "lot",
        }
    ],
    "Appointment": [
        {
            "patient": "p1",
            "actor": "Practitioner/dr1",
            "practitioner": "dr1",
            "identifier": "appt",
            "status": "booked",
            "date": "2024-04-01",
            "part-status": "accepted",
        }
    ],
    "DocumentReference": [
        {
            "patient": "p1",
            "subject": "p1",
            "encounter": "e1",
            "identifier": "urn:doc|D1",
            "type": "discharge",
            "category": "summary",
            "status": "current",
            "date": "2024-03-03",
            "contenttype": "text/plain",
        }
    ],
    "Device": [{"identifier": "urn:dev|D1", "device-name": "rhaps", "manufacturer": "orion", "model": "RAP234"}],
    "MessageHeader": [{"event": "A01", "source": "lab", "focus": "Encounter/e1"}],
    "Provenance": [{"target": "Encounter/e1", "patient": "p1", "recorded": "2024-03-01", "agent": "org"}],
    "AuditEvent": [
        {
            "date": "2024-03-01",
            "type": "110100",
            "subtype": "urn:hl7gw:operator-action|replay",
            "action": "E",
            "outcome": "0",
            "agent": "Practitioner/dr1",
            "agent-name": "alice admin",
            "agent-role": "urn:hl7gw:api-role|admin",
            "altid": "alice",
            "source": "Device/gw",
            "site": "gw-host",
            "entity": "Patient/p1",
            "entity-identifier": "urn:hl7gw:dead-letter|42",
            "entity-name": "replay",
            "entity-role": "20",
            "entity-type": "2",
        }
    ],
}

MUST_NOT_MATCH = {"patient": "p2", "identifier": "nope", "date": "1999", "status": "cancelled", "code": "nope"}


@pytest.fixture
def store(engine: Engine) -> ResourceStore:
    store = ResourceStore(engine)
    person = patient("p1", "MRN1", family="Doe", given="Jane", birthDate="1970-01-01", gender="female")
    person |= {"telecom": [{"system": "phone", "value": "555-0"}], "address": [{"city": "Bern"}]}
    resources = [person] + [{"resourceType": t, "id": f"{t.lower()}-1", **body} for t, body in RESOURCES.items()]
    store.apply_bundle(transaction(*(put(resource) for resource in resources)))
    return store


def test_every_produced_type_is_registered() -> None:
    assert set(SEARCH_PARAMETERS) == {"Patient", *RESOURCES}
    for resource_type, params in SEARCH_PARAMETERS.items():
        expected = {"identifier"} if resource_type not in ("MessageHeader", "Provenance", "AuditEvent") else set()
        assert expected <= set(params), resource_type


@pytest.mark.parametrize("resource_type", sorted(SEARCHES))
def test_each_parameter_finds_the_resource(store: ResourceStore, resource_type: str) -> None:
    wanted = {"Patient": "p1"}.get(resource_type, f"{resource_type.lower()}-1")
    for searches in SEARCHES[resource_type]:
        for name, value in searches.items():
            found = [r["id"] for r in store.search(resource_type, {name: [value]})]
            assert found == [wanted], f"{resource_type}?{name}={value}"
        together = [r["id"] for r in store.search(resource_type, {k: [v] for k, v in searches.items()})]
        assert together == [wanted]
    for name, value in MUST_NOT_MATCH.items():
        if name in SEARCH_PARAMETERS[resource_type]:
            assert store.search(resource_type, {name: [value]}) == [], f"{resource_type}?{name}={value}"
