"""Idempotency and ordering of ResourceStore.apply_bundle, as properties over delivery sequences.

Without a source, redelivering bundles changes nothing. With a source (messages), any sequence of
deliveries and redeliveries of a message set ends in the same current state, whatever the order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from gateway.db.schema import SEARCH_TABLES, fhir_resource, fhir_resource_history, patient_merge, resource_provenance
from gateway.store.ordering import Source
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import delete as delete_entry
from tests.support.fhir_bundles import observation, patient, put, transaction

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_TABLES = [fhir_resource, fhir_resource_history, *SEARCH_TABLES.values()]
_ALL_TABLES = [*_TABLES, resource_provenance, patient_merge]

KEYS = [("Patient", "p1"), ("Patient", "p2"), ("Observation", "o1"), ("Observation", "o2"), ("Observation", "o3")]


@st.composite
def entries(draw: st.DrawFn, key: tuple[str, str]) -> dict[str, Any]:
    """A PUT with drawn content, or a DELETE, for ``key``."""
    resource_type, resource_id = key
    if draw(st.integers(0, 5)) == 0:
        return delete_entry(resource_type, resource_id)
    if resource_type == "Patient":
        family = draw(st.sampled_from(["Doe", "Roe", "Müller"]))
        return put(
            patient(resource_id, f"MRN-{resource_id}", family=family, gender=draw(st.sampled_from(["male", "female"])))
        )
    when = draw(st.sampled_from(["2020-01-01", "2020-01-02T10:00:00Z", "2021"]))
    return put(observation(resource_id, draw(st.sampled_from(["p1", "p2"])), effectiveDateTime=when))


@st.composite
def consistent_bundles(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few bundles that never disagree: each resource has one content (or one DELETE) everywhere."""
    fixed = {key: draw(entries(key)) for key in KEYS}
    subsets = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)
    return [transaction(*(fixed[key] for key in draw(subsets))) for _ in range(draw(st.integers(1, 4)))]


@st.composite
def conflicting_bundles(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A few bundles that may disagree about the same resource (updates, deletes, re-creates)."""
    bundles = []
    for _ in range(draw(st.integers(1, 4))):
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
        bundles.append(transaction(*(draw(entries(key)) for key in keys)))
    return bundles


def snapshot(engine: Engine) -> dict[str, list[Any]]:
    """Everything stored, without the write times (they differ between runs), and with the history
    feed's order instead of its positions (the feed counter is not reset between runs)."""
    state: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for table in _TABLES:
            columns = [c for c in table.c if c.name != "last_updated"]
            rows = []
            stmt = select(*columns)
            if table is fhir_resource_history:
                stmt = stmt.order_by(table.c.feed_position)
            for rank, row in enumerate(conn.execute(stmt)):
                values = {str(key): value for key, value in row._asdict().items()}
                if "feed_position" in values:
                    values["feed_position"] = rank
                if values.get("content"):
                    content = orjson.loads(values["content"])
                    content["meta"].pop("lastUpdated")
                    values["content"] = content
                rows.append(orjson.dumps(values, option=orjson.OPT_SORT_KEYS, default=str))
            state[table.name] = sorted(rows)
    return state


def replay(engine: Engine, bundles: list[dict[str, Any]], sources: list[Source] | None = None) -> dict[str, list[Any]]:
    with engine.begin() as conn:
        for table in _ALL_TABLES:
            conn.execute(delete(table))
    store = ResourceStore(engine)
    for position, bundle in enumerate(bundles):
        store.apply_bundle(bundle, sources[position] if sources else None)
    return snapshot(engine)


@_SETTINGS
@given(data=st.data())
def test_repeats_end_in_the_state_of_first_appearances(engine: Engine, data: st.DataObject) -> None:
    bundles = data.draw(consistent_bundles())
    order = data.draw(st.lists(st.integers(0, len(bundles) - 1), min_size=1, max_size=8))
    first_appearances = list(dict.fromkeys(order))

    with_repeats = replay(engine, [bundles[i] for i in order])
    once_each = replay(engine, [bundles[i] for i in first_appearances])

    assert with_repeats == once_each
    # Consistent content never needs a second version, however often it arrives.
    assert {orjson.loads(row)["version_id"] for row in with_repeats["fhir_resource"]} <= {1}
    assert len(with_repeats["fhir_resource_history"]) == len(with_repeats["fhir_resource"])


@_SETTINGS
@given(data=st.data())
def test_an_immediate_redelivery_changes_nothing(engine: Engine, data: st.DataObject) -> None:
    bundles = data.draw(conflicting_bundles())
    order = data.draw(st.lists(st.integers(0, len(bundles) - 1), min_size=1, max_size=8))
    collapsed = [index for position, index in enumerate(order) if position == 0 or order[position - 1] != index]

    with_redeliveries = replay(engine, [bundles[i] for i in order])
    without = replay(engine, [bundles[i] for i in collapsed])

    assert with_redeliveries == without


# -- messages: bundles with a source --------------------------------------------------------------
_T0 = datetime(2024, 5, 1, 12, 0)


@st.composite
def message_sets(draw: st.DrawFn) -> list[tuple[dict[str, Any], Source]]:
    """A few messages from two senders; timestamps from a small set, so ties happen."""
    messages = []
    seqs = {"ADT|HOSP": 0, "LAB|HOSP": 0}
    for number in range(draw(st.integers(1, 5))):
        sender = draw(st.sampled_from(sorted(seqs)))
        seqs[sender] += 1
        moment = _T0 + timedelta(minutes=draw(st.integers(0, 3)))
        keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
        bundle = transaction(*(draw(entries(key)) for key in keys))
        messages.append((bundle, Source(f"m{number}", sender, f"C{number}", seqs[sender], moment)))
    return messages


def current_state(engine: Engine) -> list[Any]:
    """What a reader sees, and which message it comes from; a deleted resource and a tombstone alike."""
    state = []
    with engine.connect() as conn:
        for row in conn.execute(select(fhir_resource)):
            content = None
            if row.content is not None:
                content = orjson.loads(row.content)
                content.pop("meta")
            source = (str(row.source_time), row.source_sender, row.source_seq, row.source_message)
            state.append(orjson.dumps([row.type, row.id, content, source], option=orjson.OPT_SORT_KEYS))
    return sorted(state)


def deliver(engine: Engine, messages: list[tuple[dict[str, Any], Source]], order: list[int]) -> dict[str, Any]:
    replay(engine, [messages[i][0] for i in order], [messages[i][1] for i in order])
    full = snapshot(engine)
    full.pop("fhir_resource")
    return {"current": current_state(engine), **full}


@_SETTINGS
@given(data=st.data())
def test_any_delivery_order_with_redeliveries_ends_in_the_same_state(engine: Engine, data: st.DataObject) -> None:
    messages = data.draw(message_sets())
    everyone = list(range(len(messages)))
    extra = data.draw(st.lists(st.sampled_from(everyone), max_size=6))
    order = data.draw(st.permutations(everyone + extra))
    in_source_order = sorted(everyone, key=lambda i: messages[i][1].key)

    shuffled = deliver(engine, messages, order)
    reference = deliver(engine, messages, in_source_order)

    assert shuffled["current"] == reference["current"]
    for kind in SEARCH_TABLES.values():  # the search index follows the current content
        assert shuffled[kind.name] == reference[kind.name]


@_SETTINGS
@given(data=st.data())
def test_redeliveries_and_month_later_replays_change_nothing(engine: Engine, data: st.DataObject) -> None:
    """Repeating messages anywhere after their first delivery leaves every table as without them."""
    messages = data.draw(message_sets())
    first = data.draw(st.permutations(list(range(len(messages)))))
    order = list(first)
    for index in data.draw(st.lists(st.sampled_from(first), max_size=6)):
        after = order.index(index)
        order.insert(data.draw(st.integers(after + 1, len(order))), index)

    with_repeats = deliver(engine, messages, order)
    provenance_rows = _changes_only(engine)
    once_each = deliver(engine, messages, first)

    assert with_repeats == once_each  # versions, history and index too: no new version, no duplicate
    assert provenance_rows == _changes_only(engine)


def _changes_only(engine: Engine) -> list[Any]:
    """Provenance rows of versions made (a repeat superseded by a later version adds a row of its own)."""
    table = resource_provenance
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.message_id, table.c.type, table.c.id, table.c.version_id, table.c.outcome))
        return sorted(tuple(row) for row in rows if row.outcome != "superseded")
