"""The writer's KnownRows hint (gateway/store/writer.py) changes what a claim carries, never an answer:
writers sharing one database with stale or wrong hints give the same outcomes, rows and searches as
writers without one."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.db.schema import fhir_resource
from gateway.store.ordering import Source
from gateway.store.resources import AppliedEntry, ResourceStore
from gateway.store.writer import KnownRows
from tests.support.fhir_bundles import delete, patient, put, transaction

_examples = itertools.count()


def src(message_id: str, minute: int, seq: int = 1) -> Source:
    return Source(message_id, "ADT|HOSP", f"CTRL-{message_id}", seq, datetime(2024, 5, 1, 12, minute))


def family(store: ResourceStore, patient_id: str) -> str | None:
    current = store.read("Patient", patient_id)
    return current["name"][0]["family"] if current else None


def versions(store: ResourceStore, patient_id: str) -> list[int]:
    return [version.version_id for version in store.history("Patient", patient_id, {}).versions]


def found_by_family(store: ResourceStore, name: str) -> set[str]:
    return {resource["id"] for resource in store.find("Patient", {"family": [name]}).resources}


def test_a_wrong_hint_still_creates_the_resource_with_its_index(engine: Engine) -> None:
    store = ResourceStore(engine)
    assert store.known is not None
    store.known.put(("Patient", "p1"), True)  # says stored; it is not

    result = store.apply_bundle(transaction(put(patient("p1", "MRN1", family="Wrong"))), src("m1", 10))

    assert list(result) == [AppliedEntry("Patient", "p1", 1, "created")]
    assert family(store, "p1") == "Wrong"
    assert found_by_family(store, "wrong") == {"p1"}
    assert versions(store, "p1") == [1]
    with engine.connect() as conn:
        row = conn.execute(select(fhir_resource).where(fhir_resource.c.id == "p1")).one()
    assert (row.version_id, row.deleted, row.source_message) == (1, False, "m1")
    assert row.content_hash and json.loads(row.content)["meta"]["versionId"] == "1"


def test_a_stale_hint_of_another_writer_neither_skips_nor_overwrites(engine: Engine) -> None:
    first, second = ResourceStore(engine), ResourceStore(engine)
    first.apply_bundle(transaction(put(patient("p1", "MRN1", family="Alpha"))), src("m1", 10))
    second.apply_bundle(transaction(put(patient("p1", "MRN1", family="Beta"))), src("m2", 20))

    # first remembers p1 as it wrote it (Alpha); the same content again is a change now.
    again = first.apply_bundle(transaction(put(patient("p1", "MRN1", family="Alpha"))), src("m3", 30))
    assert list(again) == [AppliedEntry("Patient", "p1", 3, "updated")]
    assert family(first, "p1") == "Alpha"

    # second still remembers Beta as newest: an older message of its own is superseded all the same.
    older = second.apply_bundle(transaction(put(patient("p1", "MRN1", family="Gamma"))), src("m4", 25))
    assert list(older) == [AppliedEntry("Patient", "p1", 3, "superseded", superseded_by="m3")]
    assert found_by_family(second, "alpha") == {"p1"} and found_by_family(second, "beta") == set()


_OPERATIONS = st.lists(
    st.tuples(
        st.integers(0, 1),  # which writer
        st.sampled_from(["Alpha", "Beta", None]),  # PUT with this family, or DELETE
        st.integers(0, 4),  # source minute
        st.booleans(),  # make that writer's hint wrong for the key first
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_OPERATIONS)
def test_writers_with_hints_answer_as_writers_without(engine: Engine, operations: list[Any]) -> None:
    example = next(_examples)
    hinted = [ResourceStore(engine), ResourceStore(engine)]
    plain = [ResourceStore(engine), ResourceStore(engine)]
    for store in plain:
        store.known = None
    answers = []
    for label, stores in (("h", hinted), ("c", plain)):
        patient_id = f"{label}{example}"
        outcomes = []
        for step, (writer, name, minute, wrong) in enumerate(operations):
            store = stores[writer]
            if wrong and store.known is not None:
                store.known.put(("Patient", patient_id), True)
            entry = (
                put(patient(patient_id, f"MRN-{patient_id}", family=name)) if name else delete("Patient", patient_id)
            )
            result = store.apply_bundle(transaction(entry), src(f"{patient_id}-m{step}", minute, seq=step + 1))
            outcomes += [(e.version_id, e.outcome, (e.superseded_by or "").rpartition("-")[2]) for e in result]
        searched = {name: patient_id in found_by_family(stores[1], name) for name in ("alpha", "beta")}
        answers.append((outcomes, family(stores[0], patient_id), versions(stores[0], patient_id), searched))
    assert answers[0] == answers[1]


def test_known_rows_forgets_the_oldest() -> None:
    known = KnownRows(2)
    for n in range(3):
        known.put(("Patient", f"p{n}"), True)
    assert [known.has(("Patient", f"p{n}")) for n in range(3)] == [False, True, True]
