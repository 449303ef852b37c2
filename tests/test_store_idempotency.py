"""Idempotency of ResourceStore.apply_bundle under redelivery, as properties over bundle sequences."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from gateway.store.resource_tables import SEARCH_TABLES, fhir_resource, fhir_resource_history
from gateway.store.resources import ResourceStore
from tests.fhir_bundles import delete as delete_entry
from tests.fhir_bundles import observation, patient, put, transaction

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_TABLES = [fhir_resource, fhir_resource_history, *SEARCH_TABLES.values()]

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
    """Everything stored, without the write times (they differ between runs)."""
    state: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for table in _TABLES:
            columns = [c for c in table.c if c.name != "last_updated"]
            rows = []
            for row in conn.execute(select(*columns)):
                values = {str(key): value for key, value in row._asdict().items()}
                if values.get("content"):
                    content = orjson.loads(values["content"])
                    content["meta"].pop("lastUpdated")
                    values["content"] = content
                rows.append(orjson.dumps(values, option=orjson.OPT_SORT_KEYS, default=str))
            state[table.name] = sorted(rows)
    return state


def replay(engine: Engine, bundles: list[dict[str, Any]]) -> dict[str, list[Any]]:
    with engine.begin() as conn:
        for table in _TABLES:
            conn.execute(delete(table))
    store = ResourceStore(engine)
    for bundle in bundles:
        store.apply_bundle(bundle)
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
