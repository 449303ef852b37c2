"""The schema of the last release without migrations (ce29ab1), as its create_all made it.

A database made before migrations existed has these tables and no alembic_version: migrate()
stamps it with this revision, then upgrades it from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Search index text compares byte-wise on PostgreSQL too (collation "C"), for prefix range scans.
_TEXT = sa.String(length=256).with_variant(sa.String(length=256, collation="C"), "postgresql")


def _index(table: str, name: str, *columns: str, **where: object) -> None:
    op.create_index(f"ix_{table}_{name}", table, list(columns), unique=False, **where)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("envelope_id", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=512), nullable=False),
        sa.Column("control_id", sa.String(length=256), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error_type", sa.String(length=128), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("dead_letter", "envelope", "envelope_id")
    _index("dead_letter", "status_created", "status", "created_at")

    op.create_table(
        "fhir_resource",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("source_time", sa.DateTime(), nullable=True),
        sa.Column("source_sender", sa.String(length=512), nullable=True),
        sa.Column("source_seq", sa.BigInteger(), nullable=True),
        sa.Column("source_message", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("type", "id"),
    )
    _index("fhir_resource", "updated", "type", "last_updated")

    op.create_table(
        "fhir_resource_history",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("type", "id", "version_id"),
    )
    _index("fhir_resource_history", "updated", "type", "last_updated")

    op.create_table(
        "fhir_search_date",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low", sa.DateTime(), nullable=False),
        sa.Column("high", sa.DateTime(), nullable=False),
    )
    _index("fhir_search_date", "resource", "type", "id", "param", "low", "high")
    _index("fhir_search_date", "value", "type", "param", "low", "high", "id")

    op.create_table(
        "fhir_search_reference",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
    )
    _index("fhir_search_reference", "resource", "type", "id", "param")
    _index("fhir_search_reference", "value", "type", "param", "target_id", "target_type", "id")

    op.create_table(
        "fhir_search_string",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", _TEXT, nullable=False),
        sa.Column("exact", _TEXT, nullable=False),
    )
    _index("fhir_search_string", "resource", "type", "id", "param")
    _index("fhir_search_string", "value", "type", "param", "value", "id")

    op.create_table(
        "fhir_search_token",
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", _TEXT, nullable=False),
        sa.Column("code", _TEXT, nullable=False),
    )
    _index("fhir_search_token", "resource", "type", "id", "param")
    _index("fhir_search_token", "value", "type", "param", "code", "system", "id")

    op.create_table(
        "message_archive",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=512), nullable=False),
        sa.Column("control_id", sa.String(length=256), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("message_type", sa.String(length=64), nullable=False),
        sa.Column("peer", sa.String(length=256), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("message_archive", "sender_control", "sender", "control_id")
    _index("message_archive", "status", "status", "received_at")

    op.create_table(
        "patient_merge",
        sa.Column("old_id", sa.String(length=64), nullable=False),
        sa.Column("new_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("old_id"),
    )

    op.create_table(
        "resource_provenance",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("superseded_by", sa.String(length=64), nullable=True),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "type", "id", "version_id"),
    )
    _index("resource_provenance", "resource", "type", "id")
    superseded = sa.text("outcome = 'superseded'")
    _index("resource_provenance", "superseded", "recorded_at", sqlite_where=superseded, postgresql_where=superseded)

    op.create_table(
        "sink_delivery",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("sink", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "sink"),
    )
    _index("sink_delivery", "status", "sink", "status", "received_at")


def downgrade() -> None:
    for table in (
        "sink_delivery",
        "resource_provenance",
        "patient_merge",
        "message_archive",
        "fhir_search_token",
        "fhir_search_string",
        "fhir_search_reference",
        "fhir_search_date",
        "fhir_resource_history",
        "fhir_resource",
        "dead_letter",
    ):
        op.drop_table(table)
