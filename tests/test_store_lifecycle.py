"""Lifecycle events map to state, not new copies: discharge, cancel, delete, merge, result correction.

Hand-made bundles pin the store's rules; the real samples check them end to end through the
converter (ms-fhir-converter ADT A01/A03/A11/A13/A29/A40).
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.convert.runtime.engine import Converter
from gateway.db.schema import SEARCH_TABLES, fhir_resource, fhir_resource_history, patient_merge, resource_provenance
from gateway.deliver.source import source_of
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.hl7.charset import decode_message
from gateway.hl7.message import parse
from gateway.journal import provenance
from gateway.store.ordering import Source
from gateway.store.resources import ResourceStore
from tests.conftest import sample
from tests.support.fhir_bundles import delete, observation, patient, put, transaction


def src(message_id: str, minute: int, seq: int = 1) -> Source:
    return Source(message_id, "ADT|HOSP", message_id, seq, datetime(2024, 5, 1, 12, minute))


def encounter(encounter_id: str, patient_id: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def merged_away(old_id: str, new_id: str, mrn: str) -> dict[str, Any]:
    """The non-surviving Patient of an A40 (patient.html#links)."""
    link = [{"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"}]
    return patient(old_id, mrn, active=False, link=link)


def survivor(new_id: str, old_id: str, mrn: str) -> dict[str, Any]:
    return patient(new_id, mrn, link=[{"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"}])


def provenance_of(message_id: str, *targets: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": f"prov-{message_id}",
        "recorded": "2024-05-01T12:00:00Z",
        "agent": [{"who": {"display": "ADT"}}],
        "target": [{"reference": target} for target in targets],
    }


# -- hand-made bundles ------------------------------------------------------------------------------
def test_discharge_finishes_the_encounter_in_place(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "M1")), put(encounter("e1", "p1", "in-progress"))), src("a01", 1))

    result = store.apply_bundle(transaction(put(encounter("e1", "p1", "finished"))), src("a03", 2))

    assert [(e.version_id, e.outcome) for e in result] == [(2, "updated")]
    assert [r["status"] for r in store.search("Encounter", {"patient": ["p1"]})] == ["finished"]
    # The admission arriving again (or late) does not reopen it.
    late = store.apply_bundle(transaction(put(encounter("e1", "p1", "in-progress"))), src("a01", 1))
    assert [e.outcome for e in late] == ["superseded"]
    current = store.read("Encounter", "e1")
    assert current is not None and current["status"] == "finished"


def test_cancel_and_reverse_are_states_of_the_same_encounter(engine: Engine) -> None:
    store = ResourceStore(engine)
    for minute, status in ((1, "in-progress"), (2, "finished"), (3, "in-progress"), (4, "cancelled")):
        store.apply_bundle(transaction(put(encounter("e1", "p1", status))), src(f"m{minute}", minute))

    current = store.read("Encounter", "e1")
    assert current is not None and current["status"] == "cancelled" and current["meta"]["versionId"] == "4"
    assert len(store.search("Encounter", {"_id": ["e1"]})) == 1


def test_a_deletion_removes_the_resource_and_older_updates_stay_out(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "M1"))), src("a01", 1))

    deleted = store.apply_bundle(transaction(delete("Patient", "p1")), src("a29", 3))
    late_update = store.apply_bundle(transaction(put(patient("p1", "M1", family="Late"))), src("a08", 2))

    assert [e.outcome for e in deleted] == ["deleted"]
    assert [e.outcome for e in late_update] == ["superseded"]
    assert store.read("Patient", "p1") is None
    assert store.search("Patient", {"identifier": ["M1"]}) == []


def test_a_result_correction_updates_the_observation(engine: Engine) -> None:
    store = ResourceStore(engine)
    final = observation("o1", "p1", valueQuantity={"value": 5.1, "unit": "mmol/L"})
    corrected = observation("o1", "p1", status="corrected", valueQuantity={"value": 3.9, "unit": "mmol/L"})
    store.apply_bundle(transaction(put(final)), src("oru1", 1))

    result = store.apply_bundle(transaction(put(corrected)), src("oru2", 2))
    again = store.apply_bundle(transaction(put(final)), src("oru1", 1))

    assert [(e.version_id, e.outcome) for e in result] == [(2, "updated")]
    assert [e.outcome for e in again] == ["superseded"]
    current = store.read("Observation", "o1")
    assert current is not None and current["status"] == "corrected" and current["valueQuantity"]["value"] == 3.9
    assert [r["id"] for r in store.search("Observation", {"patient": ["p1"]})] == ["o1"]


def test_a_merge_moves_references_to_the_survivor_in_the_same_transaction(engine: Engine) -> None:
    store = ResourceStore(engine)
    header = {
        "resourceType": "MessageHeader",
        "id": "mh-a01",
        "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "A01"},
        "source": {"name": "ADT", "endpoint": "urn:oid:1.2.3"},
        "focus": [{"reference": "Patient/old"}],
    }
    store.apply_bundle(transaction(put(patient("new", "M2"))), src("a04", 1))
    store.apply_bundle(
        transaction(
            put(patient("old", "M1")),
            put(encounter("e1", "old", "in-progress")),
            put(observation("o1", "old")),
            put(provenance_of("a01", "Patient/old", "Encounter/e1")),
            put(header),
        ),
        src("a01", 2),
    )

    result = store.apply_bundle(
        transaction(put(survivor("new", "old", "M2")), put(merged_away("old", "new", "M1"))), src("a40", 5)
    )

    assert [(e.type, e.id, e.version_id, e.outcome) for e in result.moved] == [
        ("Encounter", "e1", 2, "moved"),
        ("Observation", "o1", 2, "moved"),
    ]
    assert [r["id"] for r in store.search("Encounter", {"patient": ["new"]})] == ["e1"]
    assert [r["id"] for r in store.search("Observation", {"patient": ["new"]})] == ["o1"]
    assert store.search("Observation", {"patient": ["old"]}) == []
    old = store.read("Patient", "old")
    assert old is not None and old["active"] is False and old["link"][0]["type"] == "replaced-by"
    new = store.read("Patient", "new")
    assert new is not None and new["link"][0]["other"]["reference"] == "Patient/old"  # links are not moved
    prov = store.read("Provenance", "prov-a01")
    assert prov is not None and prov["target"][0]["reference"] == "Patient/old"  # the past is not rewritten
    message_header = store.read("MessageHeader", "mh-a01")  # nor what a message was about
    assert message_header is not None and message_header["focus"] == [{"reference": "Patient/old"}]
    moved = [(r.type, r.id, r.version_id) for r in provenance.for_message(engine, "a40") if r.outcome == "moved"]
    assert moved == [("Encounter", "e1", 2), ("Observation", "o1", 2)]


def test_messages_about_a_merged_away_patient_follow_the_merge(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(
        transaction(put(survivor("new", "old", "M2")), put(merged_away("old", "new", "M1"))), src("a40", 5)
    )

    # Sent before the merge, delivered after it: its Patient is older, its Encounter is re-pointed.
    late = store.apply_bundle(
        transaction(put(patient("old", "M1", family="Before")), put(encounter("e1", "old", "in-progress"))),
        src("a01", 2),
    )
    # Sent after the merge by a system that still uses the old id.
    newer = store.apply_bundle(transaction(put(observation("o9", "old"))), src("oru", 9))

    assert [e.outcome for e in late] == ["superseded", "created"]
    encounter_now = store.read("Encounter", "e1")
    assert encounter_now is not None and encounter_now["subject"]["reference"] == "Patient/new"
    observation_now = store.read("Observation", "o9")
    assert observation_now is not None and observation_now["subject"]["reference"] == "Patient/new"
    assert [e.outcome for e in newer] == ["created"]


def test_a_resource_re_pointed_by_a_merge_is_indexed_as_stored_not_as_sent(engine: Engine) -> None:
    """StoreSink.deliver makes index rows for each resource as sent, before the write transaction;
    one that the merge re-points must be indexed as it is stored."""
    store = ResourceStore(engine)
    store.apply_bundle(
        transaction(put(survivor("new", "old", "M2")), put(merged_away("old", "new", "M1"))), src("a40", 5)
    )
    sink = StoreSink(engine)
    try:
        sink.deliver(transaction(put(observation("o9", "old"))), src("oru", 9))
    finally:
        sink.close()
    assert [found["id"] for found in store.search("Observation", {"subject": ["Patient/new"]})] == ["o9"]
    assert store.search("Observation", {"subject": ["Patient/old"]}) == []


def test_merge_chains_lead_to_the_last_survivor(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(encounter("e1", "a", "in-progress"))), src("a01", 1))
    store.apply_bundle(transaction(put(merged_away("a", "b", "MA"))), src("m1", 2))
    store.apply_bundle(transaction(put(merged_away("b", "c", "MB"))), src("m2", 3))
    store.apply_bundle(transaction(put(observation("o1", "a"))), src("oru", 4))

    assert [r["id"] for r in store.search("Encounter", {"patient": ["c"]})] == ["e1"]
    assert [r["id"] for r in store.search("Observation", {"patient": ["c"]})] == ["o1"]


def test_a_newer_update_of_the_old_patient_undoes_the_merge_for_later_writes(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(merged_away("old", "new", "M1"))), src("a40", 2))
    store.apply_bundle(transaction(put(patient("old", "M1", family="Unmerged"))), src("a37", 3))

    store.apply_bundle(transaction(put(observation("o1", "old"))), src("oru", 4))

    current = store.read("Observation", "o1")
    assert current is not None and current["subject"]["reference"] == "Patient/old"
    with engine.connect() as conn:
        assert conn.execute(select(patient_merge)).all() == []


MERGE_STORY = [
    (transaction(put(patient("new", "M2"))), src("a04", 1)),
    (transaction(put(patient("old", "M1")), put(encounter("e1", "old", "in-progress"))), src("a01", 2)),
    (transaction(put(observation("o1", "old")), put(encounter("e1", "old", "finished"))), src("oru", 3)),
    (transaction(put(survivor("new", "old", "M2")), put(merged_away("old", "new", "M1"))), src("a40", 4)),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(MERGE_STORY)))))
def test_a_merge_ends_the_same_in_every_arrival_order(engine: Engine, order: tuple[int, ...]) -> None:
    store = ResourceStore(engine)
    for index in order:
        store.apply_bundle(*MERGE_STORY[index])

    encounter_now = store.read("Encounter", "e1")
    observation_now = store.read("Observation", "o1")
    assert encounter_now is not None and observation_now is not None
    assert encounter_now["status"] == "finished"
    assert encounter_now["subject"]["reference"] == observation_now["subject"]["reference"] == "Patient/new"
    old = store.read("Patient", "old")
    assert old is not None and old["active"] is False


# -- the real samples, through the converter ------------------------------------------------------------
@pytest.fixture(scope="module")
def converter() -> Converter:
    return Converter.load()


class Feed:
    """Converts raw messages and applies them as one sender's feed, in arrival order."""

    def __init__(self, engine: Engine, converter: Converter):
        self.store = ResourceStore(engine)
        self.converter = converter
        self.seq = 0

    def bundle(self, raw: bytes, recorded: str | None = None) -> tuple[dict[str, Any], Source]:
        text = decode_message(raw)
        if recorded is not None:  # EVN-2: when the event was recorded
            text = re.sub(r"(?m)^(EVN\|[^|\r\n]*\|)[^|\r\n]*", lambda m: m.group(1) + recorded, text)
        message = parse(text)
        self.seq += 1
        envelope = Envelope(
            str(uuid.uuid4()), raw, int(time.time() * 1000), message.sender, message.control_id, seq=self.seq
        )
        return self.converter.convert(message), source_of(envelope, message)

    def send(self, raw: bytes, recorded: str | None = None) -> Any:
        return self.store.apply_bundle(*self.bundle(raw, recorded))


def _resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["request"]["url"].startswith(f"{resource_type}/")]


def test_samples_admit_discharge_cancel(engine: Engine, converter: Converter) -> None:
    feed = Feed(engine, converter)
    a01, a03, a13 = (sample(f"ms-fhir-converter/ADT-{t}-01.hl7") for t in ("A01", "A03", "A13"))
    (encounter_id,) = [r["id"] for r in _resources(feed.bundle(a03)[0], "Encounter")]

    feed.send(a03, "20290801090000+0115")  # the discharge arrives first
    late_admit = feed.send(a01, "20290801070000+0115")
    stored = feed.store.read("Encounter", encounter_id)
    assert stored is not None and stored["status"] == "finished"
    assert "superseded" in [e.outcome for e in late_admit if e.type == "Encounter"]

    feed.send(a13, "20290801100000+0115")  # cancel discharge
    stored = feed.store.read("Encounter", encounter_id)
    assert stored is not None and stored["status"] == "in-progress"
    assert len(feed.store.search("Encounter", {"_id": [encounter_id]})) == 1


def test_sample_update_before_its_admission_ends_right(engine: Engine, converter: Converter) -> None:
    feed = Feed(engine, converter)
    update, update_source = feed.bundle(sample("ms-fhir-converter/ADT-A08-01.hl7"), "20290801090000+0115")
    (patient_id,) = [r["id"] for r in _resources(update, "Patient")]
    feed.store.apply_bundle(update, update_source)
    expected = feed.store.read("Patient", patient_id)

    # The admission, sent earlier under the name before the update, arrives last.
    admit = sample("ms-fhir-converter/ADT-A01-01.hl7").replace(b"|EVERYMAN&", b"|BEFORE-UPDATE&")
    late_admit = feed.send(admit, "20290801070000+0115")

    assert [e.outcome for e in late_admit if e.type == "Patient"] == ["superseded"]
    assert feed.store.read("Patient", patient_id) == expected


def test_sample_cancel_admit(engine: Engine, converter: Converter) -> None:
    feed = Feed(engine, converter)
    feed.send(sample("ms-fhir-converter/ADT-A01-01.hl7"), "20290801070000+0115")
    bundle, source = feed.bundle(sample("ms-fhir-converter/ADT-A11-01.hl7"), "20290801080000+0115")
    (encounter_id,) = [r["id"] for r in _resources(bundle, "Encounter")]

    feed.store.apply_bundle(bundle, source)

    stored = feed.store.read("Encounter", encounter_id)
    assert stored is not None and stored["status"] == "cancelled" and stored["meta"]["versionId"] == "2"


def test_sample_delete_patient(engine: Engine, converter: Converter) -> None:
    feed = Feed(engine, converter)
    feed.send(sample("ms-fhir-converter/ADT-A01-01.hl7"), "20290801070000+0115")
    bundle, source = feed.bundle(sample("ms-fhir-converter/ADT-A29-01.hl7"), "20290801080000+0115")
    deleted = [e["request"]["url"] for e in bundle["entry"] if e["request"]["method"] == "DELETE"]
    assert deleted, "the A29 conversion names what to delete"

    result = feed.store.apply_bundle(bundle, source)
    late = feed.send(sample("ms-fhir-converter/ADT-A08-01.hl7"), "20290801075000+0115")

    assert {f"{e.type}/{e.id}" for e in result if e.outcome == "deleted"} == set(deleted)
    for url in deleted:
        assert feed.store.read(*url.split("/")) is None
    assert all(e.outcome == "superseded" for e in late if f"{e.type}/{e.id}" in deleted)


OLD_PATIENT_ADMIT = (
    b"MSH|^~\\&|Ntierprise|Ntierprise Clinic|Healthmatics EHR|Healthmatics Clinic|20190401090000+0215||"
    b"ADT^A01^ADT_A01|8919-01|P|2.8\r"
    b"EVN|A01|20190401090000+0215\r"
    b"PID|1||56789^^^BCBS^MR||Test^Old^A||20180205|F\r"
    b"PV1|1|I|WARD^1^1||||||||||||||||V100^^^BCBS^VN\r"
)


def test_sample_merge_in_both_arrival_orders(engine: Engine, converter: Converter) -> None:
    a40 = sample("ms-fhir-converter/ADT-A40-01.hl7")
    states = []
    for order in ((OLD_PATIENT_ADMIT, a40), (a40, OLD_PATIENT_ADMIT)):
        _clear(engine)
        feed = Feed(engine, converter)
        merge, _ = feed.bundle(a40)
        (old,) = [
            p for p in _resources(merge, "Patient") if any(link["type"] == "replaced-by" for link in p.get("link", []))
        ]
        new_reference = old["link"][0]["other"]["reference"]
        for raw in order:
            feed.send(raw)
        (visit,) = feed.store.search(
            "Encounter", {"_id": [r["id"] for r in _resources(feed.bundle(OLD_PATIENT_ADMIT)[0], "Encounter")]}
        )
        assert visit["subject"]["reference"] == new_reference
        stored_old = feed.store.read("Patient", old["id"])
        assert stored_old is not None and stored_old["active"] is False
        states.append(_current(engine))
    assert states[0] == states[1]


def _clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (
            fhir_resource,
            fhir_resource_history,
            *SEARCH_TABLES.values(),
            resource_provenance,
            patient_merge,
        ):
            conn.execute(sql_delete(table))


def _current(engine: Engine) -> list[Any]:
    """Current content without meta, of resources other than Provenance (each message has its own)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(fhir_resource.c.type, fhir_resource.c.content).where(fhir_resource.c.type != "Provenance")
        )
        out = []
        for row in rows:
            content = orjson.loads(row.content) if row.content else None
            if content:
                content.pop("meta")
            out.append(orjson.dumps([row.type, content], option=orjson.OPT_SORT_KEYS))
    return sorted(out)
