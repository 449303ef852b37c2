"""Issue 18: the history feed. Every history row gets a feed position in commit order
(gateway/store/feed_positions.py), and fhir_feed_counter holds the last position handed out.

Rows written before this revision get positions in the order (last_updated, type, id, version_id):
the order they were most likely committed in (a transaction writes one last_updated), and a
deterministic one, so old data is in the feed too, before everything written afterwards.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BACKFILL = """
UPDATE fhir_resource_history SET feed_position = numbered.position
FROM (
    SELECT type, id, version_id,
           ROW_NUMBER() OVER (ORDER BY last_updated, type, id, version_id) AS position
    FROM fhir_resource_history
) AS numbered
WHERE fhir_resource_history.type = numbered.type
  AND fhir_resource_history.id = numbered.id
  AND fhir_resource_history.version_id = numbered.version_id
"""


def upgrade() -> None:
    op.add_column("fhir_resource_history", sa.Column("feed_position", sa.BigInteger(), nullable=True))
    op.execute(_BACKFILL)  # SQLite has UPDATE ... FROM since 3.33, window functions since 3.25
    with op.batch_alter_table("fhir_resource_history") as batch:
        batch.alter_column("feed_position", existing_type=sa.BigInteger(), nullable=False)
    op.create_index("ix_fhir_resource_history_feed", "fhir_resource_history", ["feed_position"], unique=True)
    op.create_index("ix_fhir_resource_history_type_feed", "fhir_resource_history", ["type", "feed_position"])
    counter = op.create_table(
        "fhir_feed_counter",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        counter.insert().from_select(
            ["id", "last_position"],
            sa.select(sa.literal(1), sa.func.coalesce(sa.func.max(sa.column("feed_position")), 0)).select_from(
                sa.table("fhir_resource_history", sa.column("feed_position"))
            ),
        )
    )


def downgrade() -> None:
    op.drop_table("fhir_feed_counter")
    op.drop_index("ix_fhir_resource_history_type_feed", table_name="fhir_resource_history")
    op.drop_index("ix_fhir_resource_history_feed", table_name="fhir_resource_history")
    with op.batch_alter_table("fhir_resource_history") as batch:
        batch.drop_column("feed_position")
