"""Out-of-order safety: an older message never overwrites newer data; superseded writes are recorded."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.db.schema import fhir_resource
from gateway.journal import provenance
from gateway.store.ordering import Source
from gateway.store.resources import AppliedEntry, ResourceStore
from tests.support.fhir_bundles import delete, observation, patient, put, transaction


def src(message_id: str, minute: int, seq: int = 1, sender: str = "ADT|HOSP") -> Source:
    return Source(message_id, sender, f"CTRL-{message_id}", seq, datetime(2024, 5, 1, 12, minute))


def family(store: ResourceStore, patient_id: str = "p1") -> str | None:
    current = store.read("Patient", patient_id)
    return current["name"][0]["family"] if current else None


def test_an_older_message_is_superseded_and_recorded(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Newer"))), src("m2", 30))

    result = store.apply_bundle(
        transaction(put(patient("p1", "MRN1", family="Older")), put(observation("o1", "p1"))), src("m1", 10)
    )

    assert list(result) == [
        AppliedEntry("Patient", "p1", 1, "superseded", superseded_by="m2"),
        AppliedEntry("Observation", "o1", 1, "created"),
    ]
    assert result.superseded == (result.entries[0],)
    assert family(store) == "Newer"
    rows = {(r.type, r.outcome, r.superseded_by) for r in provenance.for_message(engine, "m1")}
    assert rows == {("Patient", "superseded", "m2"), ("Observation", "created", None)}
    assert [(r.message_id, r.version_id) for r in provenance.superseded(engine)] == [("m1", 1)]


def test_a_newer_message_overwrites(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Older"))), src("m1", 10))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Newer"))), src("m2", 30))

    assert list(result) == [AppliedEntry("Patient", "p1", 2, "updated")]
    assert family(store) == "Newer"
    assert [(r.message_id, r.version_id, r.outcome) for r in provenance.for_resource(engine, "Patient", "p1")] == [
        ("m1", 1, "created"),
        ("m2", 2, "updated"),
    ]


def test_same_timestamp_from_one_sender_is_ordered_by_sequence(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Second"))), src("m2", 10, seq=2))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="First"))), src("m1", 10, seq=1))

    assert [e.outcome for e in result] == ["superseded"]
    assert family(store) == "Second"


def test_same_timestamp_from_two_senders_ends_the_same_in_either_order(engine: Engine, database_url: str) -> None:
    store = ResourceStore(engine)
    lab = (transaction(put(patient("p1", "MRN1", family="FromLab"))), src("a", 10, seq=9, sender="LAB|HOSP"))
    adt = (transaction(put(patient("p1", "MRN1", family="FromAdt"))), src("b", 10, seq=1, sender="ADT|HOSP"))
    store.apply_bundle(*lab)
    store.apply_bundle(*adt)
    one_way = family(store)

    store.apply_bundle(transaction(delete("Patient", "p1")), src("c", 59))  # start over
    store.apply_bundle(transaction(put(patient("p2", "MRN2", family="FromAdt"))), src("b2", 10, seq=1))
    store.apply_bundle(
        transaction(put(patient("p2", "MRN2", family="FromLab"))), src("a2", 10, seq=9, sender="LAB|HOSP")
    )

    assert one_way == family(store, "p2") == "FromLab"  # "LAB|HOSP" > "ADT|HOSP": the tie-break


def test_timestamps_decide_between_senders(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Lab"))), src("a", 20, seq=1, sender="LAB|X"))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Adt"))), src("b", 10, seq=99))

    assert [e.outcome for e in result] == ["superseded"]
    assert family(store) == "Lab"


def test_a_redelivery_is_unchanged_not_superseded(engine: Engine) -> None:
    store = ResourceStore(engine)
    bundle = transaction(put(patient("p1", "MRN1")), put(observation("o1", "p1")))
    store.apply_bundle(bundle, src("m1", 10))

    again = store.apply_bundle(bundle, src("m1", 10))

    assert [(e.version_id, e.outcome) for e in again] == [(1, "unchanged"), (1, "unchanged")]
    assert not again.changed
    assert len(provenance.for_message(engine, "m1")) == 2  # the first delivery's rows only


def test_a_replay_of_the_same_message_with_new_content_applies(engine: Engine) -> None:
    """The same message converted again after a mapping fix: same source, so not older than itself."""
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Wrong"))), src("m1", 10))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Right"))), src("m1", 10))

    assert [e.outcome for e in result] == ["updated"]
    assert family(store) == "Right"


def test_equal_content_from_a_newer_message_moves_the_source_forward(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="A"))), src("m1", 10))
    unchanged = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="A"))), src("m3", 30))
    assert [(e.version_id, e.outcome) for e in unchanged] == [(1, "unchanged")]

    # Sent between the two: older than what the store now knows the content is from.
    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="B"))), src("m2", 20))

    assert [(e.outcome, e.superseded_by) for e in result] == [("superseded", "m3")]
    assert family(store) == "A"


def test_a_delete_of_nothing_leaves_a_tombstone_that_stops_older_messages(engine: Engine) -> None:
    store = ResourceStore(engine)

    assert [e.outcome for e in store.apply_bundle(transaction(delete("Patient", "p1")), src("a29", 30))] == [
        "unchanged"
    ]
    assert store.fetch("Patient", "p1") is None  # a tombstone is not a resource

    older = store.apply_bundle(transaction(put(patient("p1", "MRN1"))), src("a01", 10))
    assert [(e.version_id, e.outcome, e.superseded_by) for e in older] == [(0, "superseded", "a29")]
    assert store.read("Patient", "p1") is None
    assert store.search("Patient", {"identifier": ["MRN1"]}) == []

    newer = store.apply_bundle(transaction(put(patient("p1", "MRN1"))), src("a04", 50))
    assert list(newer) == [AppliedEntry("Patient", "p1", 1, "created")]


def test_an_older_put_after_a_delete_stays_deleted(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))), src("a01", 10))
    store.apply_bundle(transaction(delete("Patient", "p1")), src("a29", 30))

    late = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Late"))), src("a08", 20))

    assert [(e.version_id, e.outcome) for e in late] == [(2, "superseded")]
    assert store.read("Patient", "p1") is None
    stored = store.fetch("Patient", "p1")
    assert stored is not None and stored.deleted and stored.version_id == 2


def test_an_older_delete_does_not_remove_newer_data(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))), src("a08", 30))

    result = store.apply_bundle(transaction(delete("Patient", "p1")), src("a29", 10))

    assert [e.outcome for e in result] == ["superseded"]
    assert store.read("Patient", "p1") is not None


def test_writes_without_a_source_are_not_ordered(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="FromMessage"))), src("m1", 30))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Manual"))))

    assert [e.outcome for e in result] == ["updated"]
    with engine.connect() as conn:
        row = conn.execute(select(fhir_resource.c.source_message).where(fhir_resource.c.id == "p1")).one()
    assert row.source_message is None


def test_the_stored_source_is_the_last_writer(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="A"))), src("m1", 10, seq=4))
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="B"))), src("m2", 20, seq=5))

    with engine.connect() as conn:
        row = conn.execute(select(fhir_resource).where(fhir_resource.c.id == "p1")).one()
    assert (row.source_message, row.source_sender, row.source_seq) == ("m2", "ADT|HOSP", 5)
    assert row.source_time == datetime(2024, 5, 1, 12, 20)
