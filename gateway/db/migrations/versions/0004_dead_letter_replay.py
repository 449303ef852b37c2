"""Issue 15: operator_job, bulk replays and reprocesses (durable, resumable); on dead_letter, what
an operator did with a letter (replayed as which envelope, or discarded; by whom, when, why), the
letter a failed replay came from, and room for a sink's stage name (deliver:<sink>).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: (name, type, server default) of the columns added.
_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any], str], ...] = (
    ("replay_of", sa.String(36), ""),
    ("replayed_as", sa.String(64), ""),
    ("handled_by", sa.String(128), ""),
    ("handled_at", sa.BigInteger(), "0"),
    ("handled_note", sa.Text(), ""),
)


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("dead_letter")}
    with op.batch_alter_table("dead_letter") as batch:
        batch.alter_column("stage", existing_type=sa.String(32), type_=sa.String(128), existing_nullable=False)
        for name, kind, default in _COLUMNS:
            if name not in present:  # a development build made it with create_all
                batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))

    if not sa.inspect(op.get_bind()).has_table("operator_job"):
        op.create_table(
            "operator_job",
            sa.Column("id", sa.String(36), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("filter", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("created_by", sa.String(128), nullable=False),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.Column("done", sa.Integer(), nullable=False),
            sa.Column("skipped", sa.Integer(), nullable=False),
            sa.Column("cursor", sa.String(128), nullable=False),
            sa.Column("lease_owner", sa.String(64), nullable=False),
            sa.Column("lease_until", sa.BigInteger(), nullable=False),
            sa.Column("summary", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_operator_job_status", "operator_job", ["status"])


def downgrade() -> None:
    op.drop_index("ix_operator_job_status", table_name="operator_job")
    op.drop_table("operator_job")
    with op.batch_alter_table("dead_letter") as batch:
        for name, _kind, _default in _COLUMNS:
            batch.drop_column(name)
        batch.alter_column("stage", existing_type=sa.String(128), type_=sa.String(32), existing_nullable=False)
