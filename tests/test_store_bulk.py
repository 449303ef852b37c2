"""Bulk statements (gateway/store/bulk.py) store and find exactly what SQLAlchemy Core does, on both databases."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway.db.bulk import BulkInsert, BulkUpdate, KeyedRows
from gateway.db.engine import make_engine
from gateway.db.schema import fhir_resource, fhir_search_date, message_archive

COLUMNS = tuple(fhir_resource.c.keys())
ROW = ("Patient", "p1", 3, datetime(2024, 5, 1, 12, 0, 0, 123000), False, "abc", '{"x":"é\\"{}"}')
SOURCE = (datetime(1999, 12, 31, 23, 59, 59, 999999), "app|fac", 2**40, "m1")


def raw_rows(engine: Engine, table: str) -> list[tuple[object, ...]]:
    """The rows as the driver returns them, without SQLAlchemy's type conversion."""
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table}"))


def test_an_insert_stores_what_core_stores(engine: Engine, database_url: str) -> None:
    rows = [ROW + SOURCE, ("Patient", "p2", 0, datetime(1, 1, 1), True, "", None, None, None, None, None)]
    with engine.begin() as conn:
        BulkInsert(fhir_resource).run(conn, rows)
    bulk = raw_rows(engine, "fhir_resource")

    other = make_engine(database_url)
    with other.begin() as conn:
        conn.execute(fhir_resource.delete())
        conn.execute(insert(fhir_resource), [dict(zip(COLUMNS, row)) for row in rows])
    assert raw_rows(other, "fhir_resource") == bulk
    other.dispose()


def test_blobs_and_datetime_extremes_round_trip(engine: Engine) -> None:
    low, high = datetime(1, 1, 1), datetime.max
    with engine.begin() as conn:
        BulkInsert(fhir_search_date).run(conn, [("Patient", "p1", "birthdate", low, high)])
        archived = ("m1", "s", "c", 1, "ADT^A01", "peer", 5, b"\x00MSH|\xff", "processed", 1, 6, "", "")
        BulkInsert(message_archive).run(conn, [archived])
    with engine.connect() as conn:
        assert conn.execute(select(fhir_search_date.c.low, fhir_search_date.c.high)).one() == (low, high)
        assert bytes(conn.execute(select(message_archive.c.raw)).scalar_one()) == b"\x00MSH|\xff"


def test_a_conflict_clause_applies_per_row(engine: Engine) -> None:
    upsert = BulkInsert(
        fhir_resource,
        conflict="ON CONFLICT (type, id) DO UPDATE SET version_id = fhir_resource.version_id + excluded.version_id",
    )
    with engine.begin() as conn:
        upsert.run(conn, [ROW + SOURCE])
        upsert.run(conn, [ROW + SOURCE])
    with engine.connect() as conn:
        assert conn.execute(select(fhir_resource.c.version_id)).scalar_one() == 6


def test_a_duplicate_key_fails_the_statement(engine: Engine) -> None:
    with pytest.raises(IntegrityError):
        with engine.begin() as conn:
            BulkInsert(fhir_resource).run(conn, [ROW + SOURCE, ROW + SOURCE])
    assert raw_rows(engine, "fhir_resource") == []


def test_postgresql_rejects_a_value_longer_than_its_column(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite does not enforce varchar lengths")
    with pytest.raises(DBAPIError, match="too long"):
        with engine.begin() as conn:
            BulkInsert(fhir_resource).run(conn, [ROW + (SOURCE[0], "x" * 513, 1, "m1")])


def test_claiming_returns_the_rows_inserted(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("RETURNING from a bulk insert is PostgreSQL's")
    claim = BulkInsert(
        fhir_resource,
        conflict="ON CONFLICT (type, id) DO UPDATE SET version_id = fhir_resource.version_id WHERE false",
        returning="type, id",
    )
    with engine.begin() as conn:
        assert claim.run(conn, [ROW + SOURCE]) == [("Patient", "p1")]
        second = ("Patient", "p0", *ROW[2:], *SOURCE)
        assert claim.run(conn, [second, ROW + SOURCE]) == [("Patient", "p0")]


def test_an_update_changes_only_its_rows_and_columns(engine: Engine) -> None:
    other = ("Patient", "p2", *ROW[2:], *SOURCE)
    with engine.begin() as conn:
        BulkInsert(fhir_resource).run(conn, [ROW + SOURCE, other])
        sources = ("source_time", "source_sender", "source_seq", "source_message")
        BulkUpdate(fhir_resource, sources, ("type", "id")).run(conn, [(None, None, None, None, "Patient", "p1")])
    with engine.connect() as conn:
        found = conn.execute(select(fhir_resource).order_by(fhir_resource.c.id)).all()
    assert [tuple(row) for row in found] == [ROW + (None, None, None, None), other]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stored=st.sets(st.tuples(st.sampled_from(["Patient", "Encounter"]), st.text("ab", min_size=1, max_size=3))),
    asked=st.lists(st.tuples(st.sampled_from(["Patient", "Encounter", "Group"]), st.text("ab", max_size=3))),
)
def test_keyed_rows_find_and_delete_exactly_the_keys_asked_for(
    engine: Engine, stored: set[tuple[str, str]], asked: list[tuple[str, str]]
) -> None:
    with engine.begin() as conn:
        conn.execute(fhir_resource.delete())  # the fixture's database is shared by the examples
        BulkInsert(fhir_resource).run(conn, [(t, i, *ROW[2:], *SOURCE) for t, i in sorted(stored)])
        keyed = KeyedRows(fhir_resource, ("version_id", "last_updated", "source_time"))
        found = keyed.select(conn, sorted(set(asked)))
        assert sorted(found) == sorted((t, i, 3, ROW[3], SOURCE[0]) for t, i in stored & set(asked))
        keyed.delete(conn, sorted(set(asked)))
        left = {(row.type, row.id) for row in conn.execute(select(fhir_resource.c.type, fhir_resource.c.id))}
    assert left == stored - set(asked)


def test_keyed_rows_take_more_keys_than_one_statement_holds(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KeyedRows, "CHUNK", 3)
    keys = [("Patient", f"p{i:02d}") for i in range(10)]
    with engine.begin() as conn:
        BulkInsert(fhir_resource).run(conn, [(*key, *ROW[2:], *SOURCE) for key in keys[::2]])
        assert sorted(KeyedRows(fhir_resource).select(conn, keys)) == keys[::2]
