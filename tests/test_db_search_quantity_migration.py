"""Migration 0009: Observations stored before it are searchable by quantity afterwards, with exactly
the index rows the write path makes (gateway/store/index.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from alembic import command
from sqlalchemy import MetaData, select

from gateway import fhirjson
from gateway.db.engine import make_engine
from gateway.db.migrate import _config, current, head
from gateway.db.schema import fhir_search_quantity
from gateway.store.index import index_rows
from gateway.store.resources import ResourceStore

UCUM = "http://unitsofmeasure.org"
OLD = [
    {
        "resourceType": "Observation",
        "id": "old1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 120, "system": UCUM, "code": "mm[Hg]"}},
            {"code": {"text": "diastolic"}, "valueQuantity": {"value": Decimal("80.5"), "unit": "mmHg"}},
        ],
    },
    {
        "resourceType": "Observation",
        "id": "old2",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"},
    },
    {"resourceType": "Observation", "id": "old3", "status": "final", "code": {"text": "x"}, "valueString": "72"},
]


def test_observations_stored_before_0009_are_indexed_by_it(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), "0004")
            tables = MetaData()
            tables.reflect(conn)
            assert "fhir_search_quantity" not in tables.tables
            conn.execute(
                tables.tables["fhir_resource"].insert(),
                [
                    {
                        "type": "Observation",
                        "id": resource["id"],
                        "version_id": 1,
                        "last_updated": datetime(2026, 1, 1),
                        "deleted": False,
                        "content_hash": "h",
                        "content": fhirjson.dumps(resource).decode(),
                    }
                    for resource in OLD
                ],
            )
        with engine.begin() as conn:
            command.upgrade(_config(conn), "head")
            assert current(conn) == head()

        with engine.connect() as conn:
            stored = conn.execute(select(*fhir_search_quantity.c)).all()
        made = [row for resource in OLD for row in index_rows("Observation", resource["id"], resource).quantities]
        assert sorted(tuple(row) for row in stored) == sorted(made)
        assert len(made) == 3

        store = ResourceStore(engine)
        assert [r["id"] for r in store.search("Observation", {"value-quantity": ["72||/min"]})] == ["old2"]
        found = store.search("Observation", {"component-value-quantity": ["gt80||mmHg"]})
        assert [r["id"] for r in found] == ["old1"]
    finally:
        engine.dispose()
