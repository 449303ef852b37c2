"""ResourceStore.apply_bundle, read, vread: versions, all-or-nothing, deletes, concurrency, error mapping."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.schema import fhir_resource, fhir_resource_history
from gateway.deliver.store_sink import StoreSink
from gateway.errors import DeliveryError, Policy, StoreUnavailable, is_retryable, policy_of
from gateway.store.resources import AppliedEntry, ResourceStore, content_hash
from tests.support.faults import fail_inserts_of
from tests.support.fhir_bundles import delete, observation, patient, put, transaction


def history_count(engine: Engine, resource_type: str, resource_id: str) -> int:
    table = fhir_resource_history
    with engine.connect() as conn:
        stmt = select(func.count()).where(table.c.type == resource_type, table.c.id == resource_id)
        return int(conn.execute(stmt).scalar_one())


def resource_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(fhir_resource)).scalar_one())


def test_apply_creates_resources_with_meta(engine: Engine) -> None:
    store = ResourceStore(engine)
    result = store.apply_bundle(transaction(put(patient("p1", "MRN1")), put(observation("o1", "p1"))))

    assert list(result) == [
        AppliedEntry("Patient", "p1", 1, "created"),
        AppliedEntry("Observation", "o1", 1, "created"),
    ]
    assert result.changed
    stored = store.read("Patient", "p1")
    assert stored is not None
    assert stored["meta"]["versionId"] == "1"
    assert stored["meta"]["lastUpdated"].endswith("Z")
    assert {k: v for k, v in stored.items() if k != "meta"} == patient("p1", "MRN1")
    assert store.read("Patient", "missing") is None


def test_reapplying_the_same_bundle_changes_nothing(engine: Engine) -> None:
    store = ResourceStore(engine)
    bundle = transaction(put(patient("p1", "MRN1")), put(observation("o1", "p1")))
    store.apply_bundle(bundle)
    first = store.read("Patient", "p1")

    again = store.apply_bundle(bundle)

    assert [(e.version_id, e.outcome) for e in again] == [(1, "unchanged"), (1, "unchanged")]
    assert not again.changed
    assert store.read("Patient", "p1") == first  # lastUpdated kept too
    assert history_count(engine, "Patient", "p1") == 1


def test_changed_content_makes_a_new_version(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Doe"))))

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Smith"))))

    assert list(result) == [AppliedEntry("Patient", "p1", 2, "updated")]
    current = store.read("Patient", "p1")
    assert current is not None and current["meta"]["versionId"] == "2"
    assert current["name"][0]["family"] == "Smith"
    first = store.vread("Patient", "p1", 1)
    assert first is not None and first.resource is not None
    assert first.resource["name"][0]["family"] == "Doe"
    assert store.vread("Patient", "p1", 3) is None
    assert history_count(engine, "Patient", "p1") == 2


def test_the_stores_meta_is_not_content(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))))
    with_meta = patient("p1", "MRN1", meta={"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z"})

    result = store.apply_bundle(transaction(put(with_meta)))

    assert [e.outcome for e in result] == ["unchanged"]
    assert content_hash(with_meta) == content_hash(patient("p1", "MRN1"))


def test_a_security_label_alone_makes_a_new_version(engine: Engine) -> None:
    """meta.security and meta.tag are content: a message that only marks an order restricted
    (ORC-28) or a visit protected (PV2-22) must be stored, and sent again changes nothing."""
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))))
    restricted = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}

    assert [e.outcome for e in store.apply_bundle(transaction(put(patient("p1", "MRN1", meta=restricted))))] == [
        "updated"
    ]
    assert [e.outcome for e in store.apply_bundle(transaction(put(patient("p1", "MRN1", meta=restricted))))] == [
        "unchanged"
    ]
    stored = store.read("Patient", "p1")
    assert stored is not None and stored["meta"]["security"][0]["code"] == "R" and stored["meta"]["versionId"] == "2"


def test_incoming_meta_is_kept_but_version_fields_are_ours(engine: Engine) -> None:
    store = ResourceStore(engine)
    tagged = patient("p1", "MRN1", meta={"versionId": "7", "source": "#msg1", "tag": [{"code": "x"}]})
    store.apply_bundle(transaction(put(tagged)))

    stored = store.read("Patient", "p1")

    assert stored is not None
    assert stored["meta"]["versionId"] == "1"
    assert stored["meta"]["source"] == "#msg1" and stored["meta"]["tag"] == [{"code": "x"}]
    assert tagged["meta"]["versionId"] == "7"  # the caller's bundle is not modified


def test_results_follow_entry_order(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p2", "MRN2"))))
    bundle = transaction(put(patient("p3", "MRN3")), put(patient("p2", "MRN2")), put(patient("p1", "MRN1")))

    result = store.apply_bundle(bundle)

    assert [(e.id, e.outcome) for e in result] == [("p3", "created"), ("p2", "unchanged"), ("p1", "created")]


def test_delete_marks_deleted_with_a_new_version(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))))

    result = store.apply_bundle(transaction(delete("Patient", "p1")))

    assert list(result) == [AppliedEntry("Patient", "p1", 2, "deleted")]
    assert store.read("Patient", "p1") is None
    stored = store.fetch("Patient", "p1")
    assert stored is not None and stored.deleted and stored.version_id == 2 and stored.resource is None
    assert store.search("Patient", {"identifier": ["MRN1"]}) == []
    assert list(store.apply_bundle(transaction(delete("Patient", "p1")))) == [
        AppliedEntry("Patient", "p1", 2, "unchanged")
    ]
    recreated = store.apply_bundle(transaction(put(patient("p1", "MRN1"))))
    assert list(recreated) == [AppliedEntry("Patient", "p1", 3, "created")]
    assert [r["id"] for r in store.search("Patient", {"identifier": ["MRN1"]})] == ["p1"]
    assert history_count(engine, "Patient", "p1") == 3


def test_deleting_what_does_not_exist_does_nothing(engine: Engine) -> None:
    store = ResourceStore(engine)

    result = store.apply_bundle(transaction(delete("Patient", "ghost")))

    assert list(result) == [AppliedEntry("Patient", "ghost", 0, "unchanged")]
    assert store.fetch("Patient", "ghost") is None


def test_empty_transaction_is_a_no_op(engine: Engine) -> None:
    assert list(ResourceStore(engine).apply_bundle(transaction())) == []


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        ({"resourceType": "Patient"}, "not a FHIR Bundle"),
        ({**transaction(), "type": "batch"}, "Bundle.type must be 'transaction'"),
        ({**transaction(), "entry": {}}, "Bundle.entry must be a list"),
        (transaction({"resource": patient("p1", "M")}), "entry[0]: has no request"),
        (
            transaction({**put(patient("p1", "M")), "request": {"method": "PUT", "url": "Patient"}}),
            "is not [type]/[id]",
        ),
        (
            transaction({**put(patient("p1", "M")), "request": {"method": "PUT", "url": "Patient/a b"}}),
            "is not [type]/[id]",
        ),
        (
            transaction({**put(patient("p1", "M")), "request": {"method": "POST", "url": "Patient/p1"}}),
            "'POST' is not supported",
        ),
        (transaction({**put(patient("p1", "M")), "request": {"method": "PUT", "url": "Patient/p2"}}), "does not match"),
        (
            transaction({**put(observation("o1", "p1")), "request": {"method": "PUT", "url": "Patient/o1"}}),
            "does not match",
        ),
        (transaction({"request": {"method": "PUT", "url": "Patient/p1"}}), "PUT without a resource"),
        (transaction(put(patient("p1", "M")), delete("Patient", "p1")), "entry[1]: Patient/p1 appears twice"),
        (transaction(put(patient("p1", "M", extra={1: "non-string key"}))), "resource is not JSON"),
    ],
)
def test_bad_bundles_are_refused_with_the_reason(engine: Engine, bundle: Any, reason: str) -> None:
    store = ResourceStore(engine)

    with pytest.raises(DeliveryError) as caught:
        store.apply_bundle(bundle)

    assert reason in str(caught.value)
    assert not is_retryable(caught.value)
    assert caught.value.stage == "deliver"
    assert resource_count(engine) == 0


def test_a_failing_entry_rolls_back_the_whole_bundle(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Doe"))))
    fail_inserts_of(engine, "o-bad")
    bundle = transaction(
        put(patient("p1", "MRN1", family="Changed")), put(observation("o1", "p1")), put(observation("o-bad", "p1"))
    )

    # SQLite's words name the trigger's message; PostgreSQL's error is reduced to its SQLSTATE,
    # since its messages can quote the values of a row (gateway/errors.py describe).
    with pytest.raises(DeliveryError, match="rejected by test trigger|RaiseException SQLSTATE P0001") as caught:
        store.apply_bundle(bundle)

    assert not is_retryable(caught.value)
    current = store.read("Patient", "p1")
    assert current is not None and current["meta"]["versionId"] == "1" and current["name"][0]["family"] == "Doe"
    assert store.read("Observation", "o1") is None
    assert store.search("Patient", {"family": ["changed"]}) == []
    assert history_count(engine, "Patient", "p1") == 1


def _apply_from_threads(store: ResourceStore, bundles: list[dict[str, Any]]) -> list[Any]:
    barrier = threading.Barrier(len(bundles))
    results: list[Any] = [None] * len(bundles)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = store.apply_bundle(bundles[index])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bundles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [r for r in results if isinstance(r, Exception)], results
    return results


def test_concurrent_apply_of_the_same_bundle_makes_one_version(engine: Engine) -> None:
    store = ResourceStore(engine)
    bundle = transaction(put(patient("p1", "MRN1")), put(observation("o1", "p1")), put(observation("o2", "p1")))

    results = _apply_from_threads(store, [bundle] * 6)

    outcomes = Counter((e.type, e.id, e.version_id, e.outcome) for result in results for e in result)
    for key in (("Patient", "p1"), ("Observation", "o1"), ("Observation", "o2")):
        assert outcomes[(*key, 1, "created")] == 1
        assert outcomes[(*key, 1, "unchanged")] == 5
        assert history_count(engine, *key) == 1


def test_concurrent_updates_of_one_patient_lose_no_version(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "MRN1"))))
    bundles = [
        transaction(put(patient("p1", "MRN1", family=f"F{i}")), put(observation(f"o{i}", "p1"))) for i in range(6)
    ]

    results = _apply_from_threads(store, bundles)

    versions = sorted(e.version_id for result in results for e in result if e.type == "Patient")
    assert versions == [2, 3, 4, 5, 6, 7]
    current = store.read("Patient", "p1")
    assert current is not None and current["meta"]["versionId"] == "7"
    assert history_count(engine, "Patient", "p1") == 7
    assert len(store.search("Observation", {"patient": ["p1"]})) == 6


def test_a_locked_database_is_an_outage(engine: Engine, database_url: str) -> None:
    ResourceStore(engine).apply_bundle(transaction(put(patient("p1", "MRN1"))))
    impatient = make_engine(database_url)
    sqlite = impatient.dialect.name == "sqlite"

    @event.listens_for(impatient, "connect")
    def _short_wait(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=50" if sqlite else "SET lock_timeout = '50ms'")
        cursor.close()
        if not sqlite:
            dbapi_conn.commit()

    blocker = engine.connect()
    try:
        if sqlite:
            blocker.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            blocker.execute(text("SELECT id FROM fhir_resource WHERE id = 'p1' FOR UPDATE"))
        with pytest.raises(StoreUnavailable) as caught:
            ResourceStore(impatient).apply_bundle(transaction(put(patient("p1", "MRN1", family="New"))))
        assert policy_of(caught.value) is Policy.OUTAGE
    finally:
        blocker.rollback()
        blocker.close()
        impatient.dispose()
    assert ResourceStore(engine).apply_bundle(transaction(put(patient("p1", "MRN1", family="New")))).changed


def test_an_unreachable_database_is_an_outage() -> None:
    unreachable = make_engine("postgresql://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreUnavailable, match="unavailable while storing: OperationalError: connection failed"):
            ResourceStore(unreachable).apply_bundle(transaction(put(patient("p1", "MRN1"))))
    finally:
        unreachable.dispose()


def test_store_sink_delivers_into_the_store(engine: Engine) -> None:
    sink = StoreSink(engine)

    result = sink.deliver(transaction(put(patient("p1", "MRN1"))))

    assert list(result) == [AppliedEntry("Patient", "p1", 1, "created")]
    assert sink.store.read("Patient", "p1") is not None
    with pytest.raises(DeliveryError):
        sink.deliver({"resourceType": "Bundle", "type": "batch"})


def test_reindex_rebuilds_search_rows(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(*(put(patient(f"p{i}", f"MRN{i}")) for i in range(5))))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM fhir_search_token"))
    assert store.search("Patient", {"identifier": ["MRN3"]}) == []

    assert store.reindex("Patient", batch=2) == 5

    assert [r["id"] for r in store.search("Patient", {"identifier": ["MRN3"]})] == ["p3"]


def test_concurrent_mixed_bundles_keep_versions_consistent(engine: Engine) -> None:
    """Overlapping creates, updates and deletes from several threads: no error, no gap, no lost version."""
    store = ResourceStore(engine)
    rnd = random.Random(3)
    for _ in range(8):
        bundles = []
        for _ in range(4):
            entries = []
            for number in rnd.sample(range(5), 3):
                choice = rnd.random()
                if choice < 0.25:
                    entries.append(delete("Patient", f"p{number}"))
                elif choice < 0.6:
                    entries.append(put(patient(f"p{number}", f"M{number}", family=rnd.choice(["A", "B"]))))
                else:
                    entries.append(put(observation(f"o{number}", f"p{number}", code=rnd.choice(["X", "Y"]))))
            bundles.append(transaction(*entries))
        _apply_from_threads(store, bundles)

    with engine.connect() as conn:
        current = {(r.type, r.id): (r.version_id, r.deleted) for r in conn.execute(select(fhir_resource))}
        history = Counter((r.type, r.id) for r in conn.execute(select(fhir_resource_history)))
        latest = {
            (r.type, r.id): r.deleted
            for r in conn.execute(select(fhir_resource_history))
            if r.version_id == current.get((r.type, r.id), (0,))[0]
        }
    assert current and all(version >= 1 for version, _ in current.values())  # no DELETE placeholder left
    assert {key: version for key, (version, _) in current.items()} == dict(history)  # versions 1..n, no gaps
    assert {key: deleted for key, (_, deleted) in current.items()} == latest
