"""The trail's lean write path stores exactly the rows the store's own write path makes, and the Patients
of an answer are found wherever a resource references them."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from gateway import fhirjson
from gateway.store.access_events import Access, AuthFailure, Interaction, access_events, auth_failure_event, patients_in
from gateway.store.audit_append import append_events
from gateway.store.audit_retention import purge_expired
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import observation, put, transaction

TABLES = {
    "fhir_resource": "version_id, deleted, content_hash, content, source_time, source_sender, source_message",
    "fhir_resource_history": "version_id, deleted, content",
    "fhir_search_token": "param, system, code",
    "fhir_search_string": "param, value, exact",
    "fhir_search_date": "param, low, high",
    "fhir_search_reference": "param, target_type, target_id",
}


def access(resources: list[dict[str, Any]], interaction: Interaction = Interaction.search_type) -> Access:
    """The Access of an answer of ``resources``: the resource of a read, or a searchset Bundle of them."""
    what = f"Observation/{resources[0]['id']}" if interaction is Interaction.read else None
    line = "GET /fhir/Observation?code=x"
    if interaction is Interaction.read:
        answer = fhirjson.dumps(resources[0])
    else:
        entries = [{"fullUrl": f"http://gw/fhir/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
        answer = fhirjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries})
    return Access(interaction, "ann", "reader", "10.1.2.3", "http://gw/fhir", line, answer, datetime(2026, 5, 1), what)


def stored_rows(engine: Engine, ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of these AuditEvents, by table, keyed by id and without meta.lastUpdated (it differs)."""
    found = {}
    with engine.connect() as conn:
        for table, columns in TABLES.items():
            rows = conn.exec_driver_sql(f"SELECT id, {columns} FROM {table} WHERE type = 'AuditEvent'").all()
            found[table] = sorted(tuple(_without_last_updated(value) for value in row) for row in rows if row[0] in ids)
    return found


def _without_last_updated(value: Any) -> Any:
    if isinstance(value, str) and value.startswith('{"resourceType"'):
        resource = fhirjson.loads(value)
        del resource["meta"]["lastUpdated"]
        return fhirjson.dumps(resource).decode()
    return value


def test_appended_events_have_the_rows_apply_bundle_makes(engine: Engine) -> None:
    store = ResourceStore(engine)
    answer = [observation(f"o{n}", f"p{n % 3}", performer=[{"reference": "Patient/p9"}]) for n in range(6)]
    events = [
        *access_events(access(answer)),  # four Patients
        *access_events(access(answer[:1], Interaction.read)),  # two Patients and the Observation read
        auth_failure_event(AuthFailure.forbidden, "GET", "/fhir/AuditEvent", None, datetime(2026, 5, 1), who="ann"),
    ]
    ids = [event["id"] for event in events]

    with store.transaction() as conn:
        assert append_events(conn, events, datetime.now(UTC).replace(tzinfo=None, microsecond=0)) == 3
        conn.commit()
    appended = stored_rows(engine, ids)
    assert len(appended["fhir_search_reference"]) == 4 + 3 and len(appended["fhir_search_token"]) > 3 * 5

    assert purge_expired(engine, datetime(2100, 1, 1)) == 3
    assert stored_rows(engine, ids) == {table: [] for table in TABLES}
    store.apply_bundle(transaction(*(put(copy.deepcopy(event)) for event in events)))
    assert stored_rows(engine, ids) == appended


def test_an_event_is_found_by_each_of_its_patients(engine: Engine) -> None:
    store = ResourceStore(engine)
    (event,) = access_events(access([observation("o1", "p1"), observation("o2", "p2")]))
    with store.transaction() as conn:
        append_events(conn, [event], datetime(2026, 5, 1))
        conn.commit()
    for patient in ("Patient/p1", "p2"):
        assert [e["id"] for e in store.search("AuditEvent", {"patient": [patient]})] == [event["id"]]
    assert store.search("AuditEvent", {"patient": ["p3"]}) == []


_ids = st.from_regex(r"[A-Za-z0-9\-.]{1,20}", fullmatch=True)
_text = st.text(max_size=30)


def _reference(patient: str, kind: str) -> str:
    return {
        "relative": f"Patient/{patient}",
        "absolute": f"https://ehr.example.org/fhir/Patient/{patient}",
        "versioned": f"Patient/{patient}/_history/3",
    }[kind]


@st.composite
def resources(draw: st.DrawFn) -> tuple[list[dict[str, Any]], set[str]]:
    """Resources with Patient references at any depth, among decoys, and the Patient ids a reader would find."""
    expected: set[str] = set()
    out = []
    for n in range(draw(st.integers(0, 4))):
        resource: dict[str, Any] = {"resourceType": draw(st.sampled_from(["Observation", "Encounter", "Patient"]))}
        resource["id"] = f"r{n}"
        if resource["resourceType"] == "Patient":
            expected.add(f"r{n}")
        node = resource
        for depth in range(draw(st.integers(0, 3))):
            child: dict[str, Any] = {"note": draw(_text)}
            node[f"level{depth}"] = [child] if draw(st.booleans()) else child
            node = child
        patient, kind = draw(_ids), draw(st.sampled_from(["relative", "absolute", "versioned"]))
        node["subject"] = {"reference": _reference(patient, kind), "display": draw(_text)}
        node["decoys"] = [
            {"reference": f"Practitioner/{draw(_ids)}"},
            {"text": f'"reference":"Patient/{draw(_ids)}"'},  # a string that quotes a reference is not one
            {"reference": f"RelatedPatient/{draw(_ids)}"},
        ]
        if resource["resourceType"] != "Patient":
            expected.add(patient)
        out.append(resource)
    return out, expected


@settings(max_examples=200, deadline=None)
@given(resources())
def test_patients_in_finds_every_patient_reference_and_nothing_else(
    case: tuple[list[dict[str, Any]], set[str]],
) -> None:
    answer, expected = case
    assert patients_in(answer) == sorted(expected)
