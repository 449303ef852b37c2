"""The history feed (gateway/store/feed.py): every change once, in commit order, under concurrent writers."""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, select
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.migrate import _config
from gateway.db.schema import fhir_resource_history
from gateway.store.audit_append import append_events
from gateway.store.feed import Change, FeedPage, decode_position, encode_position, head_position, read_changes
from gateway.store.resources import ResourceStore
from gateway.store.search_values import SearchError
from gateway.store.transaction import plan_changes
from gateway.store.writer import Job
from tests.support.fhir_bundles import delete, observation, patient, put, transaction
from tests.support.queue import wait_until

Version = tuple[str, str, int]


def page(engine: Engine, after: str | None, count: int = 100, **kw: Any) -> FeedPage:
    with engine.connect() as conn:
        return read_changes(conn, after, count, **kw)


def follow(engine: Engine, after: str | None = None, count: int = 3, **kw: Any) -> tuple[list[Change], str | None]:
    """Every change after ``after``, page by page; and the position to resume from."""
    seen: list[Change] = []
    while True:
        got = page(engine, after, count, **kw)
        if not got.changes:
            return seen, after
        seen.extend(got.changes)
        after = got.next_position


def history_in_feed_order(engine: Engine) -> list[Version]:
    table = fhir_resource_history
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.type, table.c.id, table.c.version_id).order_by(table.c.feed_position))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def versions(changes: list[Change]) -> list[Version]:
    return [(c.resource_type, c.resource_id, c.version_id) for c in changes]


def test_the_feed_holds_every_change_oldest_first_with_tombstones_and_merges(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("old", "MRN-1")), put(observation("o1", "old"))))
    store.apply_bundle(transaction(put(patient("new", "MRN-2"))))
    store.apply_bundle(transaction(delete("Observation", "o1")))
    store.apply_bundle(transaction(put(observation("o1", "old", code="1234-5"))))  # re-created
    link = [{"other": {"reference": "Patient/new"}, "type": "replaced-by"}]
    store.apply_bundle(transaction(put(patient("old", "MRN-1", active=False, link=link))))  # a merge

    changes, _ = follow(engine)
    assert versions(changes) == [
        ("Patient", "old", 1),
        ("Observation", "o1", 1),
        ("Patient", "new", 1),
        ("Observation", "o1", 2),
        ("Observation", "o1", 3),
        ("Patient", "old", 2),
        ("Observation", "o1", 4),  # re-pointed to the survivor, in the merge's commit, after it
    ]
    tombstone = changes[3]
    assert tombstone.deleted and tombstone.resource is None
    moved = changes[-1].resource
    assert moved is not None and moved["subject"] == {"reference": "Patient/new"} and moved["meta"]["versionId"] == "4"
    assert [c.position for c in changes] == sorted(c.position for c in changes)
    assert len({c.position for c in changes}) == len(changes)
    assert all(c.last_updated.tzinfo is None for c in changes)
    assert versions(changes) == history_in_feed_order(engine)


def test_a_reader_resumes_from_its_last_position_and_sees_only_what_came_after(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(*(put(patient(f"p{n}", f"M{n}")) for n in range(5))))
    first = page(engine, None, 2)
    assert [c.resource_id for c in first.changes] == ["p0", "p1"] and first.next_position == first.changes[-1].position
    store.apply_bundle(transaction(put(patient("p0", "M0", family="Roe"))))
    rest, last = follow(engine, first.next_position, 2)
    assert versions(rest) == [("Patient", f"p{n}", 1) for n in range(2, 5)] + [("Patient", "p0", 2)]
    empty = page(engine, last, 10)
    assert empty.changes == [] and empty.next_position is None


def test_filters_skip_rows_but_keep_the_positions(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("p1", "M1")), put(observation("o1", "p1"))))
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.transaction() as conn:
        append_events(conn, [{"resourceType": "AuditEvent", "id": "a1", **_audit_body()}], now)
        conn.commit()
    store.apply_bundle(transaction(put(observation("o2", "p1"))))

    everything, _ = follow(engine)
    assert versions(everything) == [
        ("Patient", "p1", 1),
        ("Observation", "o1", 1),
        ("AuditEvent", "a1", 1),
        ("Observation", "o2", 1),
    ]
    observations, _ = follow(engine, types=["Observation"])
    assert [c.resource_id for c in observations] == ["o1", "o2"]
    assert [c.position for c in observations] == [everything[1].position, everything[3].position]
    no_audit, _ = follow(engine, count=1, exclude={"AuditEvent"})
    assert [c.resource_type for c in no_audit] == ["Patient", "Observation", "Observation"]
    later, _ = follow(engine, since=now + timedelta(days=1))
    assert later == []
    recent, _ = follow(engine, since=everything[0].last_updated)
    assert versions(recent) == versions(everything)
    # Resume with another filter: the position is global.
    after_audit, _ = follow(engine, everything[2].position, types=["Patient", "Observation"])
    assert [c.resource_id for c in after_audit] == ["o2"]


def _audit_body() -> dict[str, Any]:
    return {
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-05-01T00:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "ann"}}],
        "source": {"observer": {"display": "hl7gw"}},
    }


@pytest.mark.parametrize("token", ["", "abc", "-1", "1.5", "٣", "9" * 20, "9223372036854775808", " 12", "0x10"])
def test_a_token_that_is_not_a_position_is_a_search_error(engine: Engine, token: str) -> None:
    with pytest.raises(SearchError):
        page(engine, token)


def test_a_page_holds_at_least_one_change(engine: Engine) -> None:
    with pytest.raises(SearchError):
        page(engine, None, 0)


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=0, max_value=2**63 - 1))
def test_tokens_round_trip_and_sort_as_positions_do(a: int, b: int) -> None:
    assert decode_position(encode_position(a)) == a
    assert (encode_position(a) < encode_position(b)) == (a < b)


@given(st.text(max_size=25))
def test_any_text_is_a_position_or_a_search_error(text: str) -> None:
    try:
        position = decode_position(text)
    except SearchError:
        return
    assert 0 <= position < 2**63 and int(text) == position


def test_a_writer_waits_for_the_feed_counter_until_the_writer_before_it_commits(engine: Engine) -> None:
    """The property the feed rests on: positions are handed out in commit order, and a reader never
    sees a position while a lower one may still commit."""
    store = ResourceStore(engine)
    second_done = threading.Event()

    def second_writer() -> None:
        store.apply_bundle(transaction(put(patient("second", "M2"))))
        second_done.set()

    with store.transaction() as conn:
        store.write(conn, [Job(plan_changes(transaction(put(patient("first", "M1")))))])
        writer = threading.Thread(target=second_writer)
        writer.start()
        # The second writer blocks (on the counter row on PostgreSQL, on BEGIN IMMEDIATE on SQLite):
        assert not second_done.wait(1.0)
        assert page(engine, None).changes == []  # and a reader sees neither
        conn.commit()
    writer.join(10)
    assert second_done.is_set()
    assert [c.resource_id for c in page(engine, None).changes] == ["first", "second"]


def test_a_rolled_back_write_leaves_no_gap_and_no_trace(engine: Engine) -> None:
    store = ResourceStore(engine)
    store.apply_bundle(transaction(put(patient("a", "M1"))))
    with store.transaction() as conn:
        store.write(conn, [Job(plan_changes(transaction(put(patient("lost", "M9")))))])
        conn.rollback()
    store.apply_bundle(transaction(put(patient("b", "M2"))))
    changes = page(engine, None).changes
    assert [c.resource_id for c in changes] == ["a", "b"]
    assert int(changes[1].position) == int(changes[0].position) + 1


def test_concurrent_writers_and_a_following_reader_see_every_change_once_in_commit_order(engine: Engine) -> None:
    """Four writers (some of their transactions rolled back, each holding its transaction open a
    little while) and a reader following the feed in small pages meanwhile: the reader ends with
    exactly the history table's rows, once each, in feed order; every resource's versions ascend."""
    store = ResourceStore(engine)
    writers, rounds = 4, 25
    errors: list[BaseException] = []
    finished = threading.Event()

    def write(worker: int) -> None:
        chance = random.Random(worker)
        try:
            for n in range(rounds):
                ids = chance.sample(range(8), chance.randint(1, 3))
                entries = []
                for i in ids:
                    if chance.random() < 0.2:
                        entries.append(delete("Observation", f"o{i}"))
                    else:
                        entries.append(put(observation(f"o{i}", f"p{worker}", valueString=f"{worker}-{n}")))
                with store.transaction() as conn:
                    store.write(conn, [Job(plan_changes(transaction(*entries)))])
                    time.sleep(chance.random() * 0.004)  # hold the transaction open: readers run meanwhile
                    if chance.random() < 0.1:
                        conn.rollback()
                    else:
                        conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    seen: list[Change] = []

    def read() -> None:
        after: str | None = None
        try:
            while True:
                done = finished.is_set()  # read once more after the writers finished
                got = page(engine, after, 5)
                seen.extend(got.changes)
                after = got.next_position or after
                if done and not got.changes:
                    return
                # A consumer polls from another process; one polling in this process without a pause
                # holds the GIL the writers need for every SQLite step (each then waits up to the 5 ms
                # switch interval), and a writer waiting for the lock passes the 30 s busy timeout.
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    finished.set()
    reader.join(60)
    assert not errors, errors
    wait_until(lambda: not reader.is_alive(), 5, "the reader to stop")

    stored = history_in_feed_order(engine)
    assert len(stored) > writers * rounds / 2
    assert versions(seen) == stored  # every change, once, in commit order
    assert [c.position for c in seen] == sorted({c.position for c in seen})
    last: dict[str, int] = {}
    for change in seen:
        assert change.version_id == last.get(change.resource_id, 0) + 1
        last[change.resource_id] = change.version_id


def test_the_migration_numbers_older_versions_in_time_order_before_new_ones(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), "0004")
            old = MetaData()
            old.reflect(conn, only=["fhir_resource_history"])
            rows = [
                ("Patient", "b", 1, datetime(2026, 1, 2)),
                ("Patient", "a", 2, datetime(2026, 1, 3)),
                ("Patient", "a", 1, datetime(2026, 1, 1)),
                ("Observation", "z", 1, datetime(2026, 1, 2)),
            ]
            conn.execute(
                old.tables["fhir_resource_history"].insert(),
                [
                    {"type": t, "id": i, "version_id": v, "last_updated": when, "deleted": False, "content": None}
                    for t, i, v, when in rows
                ],
            )
            command.upgrade(_config(conn), "head")
        ResourceStore(engine).apply_bundle(transaction(put(patient("c", "M3"))))
        changes, _ = follow(engine)
        assert versions(changes) == [
            ("Patient", "a", 1),
            ("Observation", "z", 1),
            ("Patient", "b", 1),
            ("Patient", "a", 2),
            ("Patient", "c", 1),
        ]
        assert [int(c.position) for c in changes] == [1, 2, 3, 4, 5]
    finally:
        engine.dispose()


def test_a_follower_that_starts_at_the_head_sees_only_what_comes_after(engine: Engine) -> None:
    store = ResourceStore(engine)
    with engine.connect() as conn:
        assert head_position(conn) is None
    store.apply_bundle(transaction(put(patient("old", "M1"))))
    with engine.connect() as conn:
        head = head_position(conn)
    assert head is not None and page(engine, head).changes == []
    store.apply_bundle(transaction(put(patient("new", "M2"))))
    assert [c.resource_id for c in page(engine, head).changes] == ["new"]


_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.lists(
                st.tuples(st.sampled_from(["Patient", "Observation"]), st.integers(0, 3), st.booleans()),
                min_size=1,
                max_size=3,
                unique_by=lambda e: e[:2],
            ),
        ),
        st.tuples(st.just("read"), st.integers(1, 4)),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_OPERATIONS, types=st.sampled_from([None, ["Patient"], ["Observation"]]))
def test_pages_read_between_writes_add_up_to_the_history_in_order(
    engine: Engine, operations: list[tuple[Any, ...]], types: list[str] | None
) -> None:
    """Writes (PUTs and DELETEs) and page reads of any size, interleaved: the pages read, then the rest,
    are exactly the history of the chosen types in feed order."""
    store, after, seen = ResourceStore(engine), None, []
    run = uuid.uuid4().hex[:8]  # hypothesis reuses the database: ids of this example only
    for operation in operations:
        if operation[0] == "write":
            entries = [
                delete(kind, f"{run}-{n}") if gone else put(_resource(kind, f"{run}-{n}", len(seen)))
                for kind, n, gone in operation[1]
            ]
            store.apply_bundle(transaction(*entries))
        else:
            got = page(engine, after, operation[1], types=types)
            seen.extend(got.changes)
            after = got.next_position or after
    rest, _ = follow(engine, after, 2, types=types)
    mine = [v for v in history_in_feed_order(engine) if v[1].startswith(run) and (types is None or v[0] in types)]
    assert [v for v in versions(seen + rest) if v[1].startswith(run)] == mine


def _resource(kind: str, resource_id: str, salt: int) -> dict[str, Any]:
    if kind == "Patient":
        return patient(resource_id, f"M-{resource_id}", family=f"F{salt}")
    return observation(resource_id, "p0", valueString=str(salt))
