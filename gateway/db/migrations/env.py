"""Alembic's environment for the gateway's migrations: always run by gateway/db/migrate.py on a
connection it opened (and, on PostgreSQL, locked), never from an alembic.ini."""

from __future__ import annotations

from alembic import context

from gateway.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite changes most tables by copying them: the batch mode does that.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
