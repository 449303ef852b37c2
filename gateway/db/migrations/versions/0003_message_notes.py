"""message_archive.notes: what the conversion of a processed message could not carry over
(a value that is not what its field should hold, a code not in its table, segments that fit
nowhere), for operators (issue 14).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("message_archive")}
    if "notes" in columns:  # a development build made it with create_all
        return
    with op.batch_alter_table("message_archive") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("message_archive") as batch:
        batch.drop_column("notes")
