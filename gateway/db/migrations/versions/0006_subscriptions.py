"""Issue 18: Subscriptions (rest-hook): the Subscription resources, the outbox of their
notifications with gapless event numbers, and the dispatcher's feed position and lease.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "subscription" not in present:
        op.create_table(
            "subscription",
            sa.Column("id", sa.String(64), nullable=False),
            sa.Column("version_id", sa.Integer(), nullable=False),
            sa.Column("last_updated", sa.DateTime(), nullable=False),
            sa.Column("content", sa.Text(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text(), nullable=False),
            sa.Column("resource_type", sa.String(64), nullable=False),
            sa.Column("origin", sa.String(16), nullable=False),
            sa.Column("active_since", sa.DateTime(), nullable=True),
            sa.Column("events", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if "subscription_event" not in present:
        op.create_table(
            "subscription_event",
            sa.Column("subscription_id", sa.String(64), nullable=False),
            sa.Column("event_number", sa.BigInteger(), nullable=False),
            sa.Column("resource_type", sa.String(64), nullable=False),
            sa.Column("resource_id", sa.String(64), nullable=False),
            sa.Column("version_id", sa.Integer(), nullable=False),
            sa.Column("deleted", sa.Boolean(), nullable=False),
            sa.Column("occurred_at", sa.DateTime(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=False),
            sa.Column("created_at", sa.BigInteger(), nullable=False),
            sa.Column("sent_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("subscription_id", "event_number"),
        )
        op.create_index(
            "ix_subscription_event_status", "subscription_event", ["subscription_id", "status", "event_number"]
        )
    if "subscription_dispatch" not in present:
        op.create_table(
            "subscription_dispatch",
            sa.Column("name", sa.String(32), nullable=False),
            sa.Column("position", sa.String(256), nullable=True),
            sa.Column("lease_owner", sa.String(64), nullable=False),
            sa.Column("lease_until", sa.BigInteger(), nullable=False),
            sa.Column("updated_at", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("name"),
        )


def downgrade() -> None:
    op.drop_table("subscription_dispatch")
    op.drop_index("ix_subscription_event_status", table_name="subscription_event")
    op.drop_table("subscription_event")
    op.drop_table("subscription")
