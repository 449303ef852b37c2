"""Issue 19: fhir_search_quantity, the search index of quantities (Observation value-quantity and
component-value-quantity), filled here from the Observations already stored.

The backfill is written out in this file, not imported from gateway/store (which imports gateway/db):
it makes exactly the rows gateway/store/index.py makes of a Quantity (value as a double; system,
code and unit, each cut to 256 characters, "" when absent; duplicates once). The other index rows
issue 19 added (:text, :of-type, :identifier, _tag, _security) live in the existing tables; for
resources stored before, ``hl7gw reindex`` makes them (docs/fhir-api.md).

Revision ID: 0009
Revises: 0007
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

_TEXT = sa.String(length=256).with_variant(sa.String(length=256, collation="C"), "postgresql")
_BATCH = 1000
_MAX_INDEXED = 256


def upgrade() -> None:
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("fhir_search_quantity"):  # a development build made it with create_all
        op.create_table(
            "fhir_search_quantity",
            sa.Column("type", sa.String(length=64), nullable=False),
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("param", sa.String(length=64), nullable=False),
            sa.Column("system", _TEXT, nullable=False),
            sa.Column("code", _TEXT, nullable=False),
            sa.Column("unit", _TEXT, nullable=False),
            sa.Column("value", sa.Double(), nullable=False),
        )
        op.create_index("ix_fhir_search_quantity_resource", "fhir_search_quantity", ["type", "id", "param"])
        op.create_index(
            "ix_fhir_search_quantity_value", "fhir_search_quantity", ["type", "param", "value", "code", "id"]
        )
    _backfill(bind)


def downgrade() -> None:
    op.drop_index("ix_fhir_search_quantity_value", table_name="fhir_search_quantity")
    op.drop_index("ix_fhir_search_quantity_resource", table_name="fhir_search_quantity")
    op.drop_table("fhir_search_quantity")


def _backfill(bind: sa.Connection) -> None:
    meta = sa.MetaData()
    resources = sa.Table("fhir_resource", meta, autoload_with=bind)
    quantities = sa.Table("fhir_search_quantity", meta, autoload_with=bind)
    bind.execute(sa.delete(quantities).where(quantities.c.type == "Observation"))
    after = ""
    while True:
        rows = bind.execute(
            sa.select(resources.c.id, resources.c.content)
            .where(
                resources.c.type == "Observation",
                resources.c.deleted == sa.false(),
                resources.c.id > after,
                resources.c.content.like('%"valueQuantity"%'),
            )
            .order_by(resources.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        values = [dict(zip(("id", "param", "system", "code", "unit", "value"), row)) for row in _rows(rows)]
        if values:
            bind.execute(quantities.insert(), [{"type": "Observation", **value} for value in values])
        after = rows[-1].id


def _rows(rows: Sequence[Any]) -> Iterator[tuple[str, str, str, str, str, float]]:
    for row in rows:
        observation = json.loads(row.content, parse_float=Decimal)
        components = observation.get("component")
        found = {
            "value-quantity": [observation.get("valueQuantity")],
            "component-value-quantity": [c.get("valueQuantity") for c in components if isinstance(c, dict)]
            if isinstance(components, list)
            else [],
        }
        for param, quantities in found.items():
            for quantity in dict.fromkeys(_quantity(q) for q in quantities if isinstance(q, dict)):
                if quantity is not None:
                    yield (row.id, param, *quantity)


def _quantity(quantity: dict[str, Any]) -> tuple[str, str, str, float] | None:
    number = quantity.get("value")
    if isinstance(number, bool) or not isinstance(number, (int, float, Decimal)) or not math.isfinite(number):
        return None
    texts = [quantity.get(key) for key in ("system", "code", "unit")]
    system, code, unit = (text[:_MAX_INDEXED] if isinstance(text, str) else "" for text in texts)
    return system, code, unit, float(number)
