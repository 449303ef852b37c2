"""dead_letter: what an operator did with a letter (replayed as which envelope, or discarded; by
whom, when, why), the letter a failed replay came from, and room for a sink's stage name
(deliver:<sink>, up to 64 characters of name) -- issue 15.

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


def downgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        for name, _kind, _default in _COLUMNS:
            batch.drop_column(name)
        batch.alter_column("stage", existing_type=sa.String(128), type_=sa.String(32), existing_nullable=False)
