"""Bring a database to the schema of this release: Alembic migrations (gateway/db/migrations).

Every process calls ``migrate`` at start (``hl7gw run`` before it starts its children, and
``hl7gw migrate`` alone). Three cases:

* at the newest revision already: one query, nothing else;
* empty: the tables of gateway/db/schema.py are created as they are, and stamped with the newest
  revision (the migrations are for databases that exist; tests/test_db_migrations.py checks that
  they end at exactly the same schema);
* older, or made before migrations existed (tables, but no ``alembic_version``: stamped as the
  baseline, 0001, first): upgraded, one revision after the other.

On PostgreSQL all of it runs in one transaction under an advisory lock, so that workers starting
together on many machines migrate once, and a failed migration leaves the database as it was.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from gateway.db.schema import metadata

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The revision of a database made before migrations (gateway/db/migrations/versions/0001_baseline.py).
BASELINE = "0001"
#: pg_advisory_xact_lock key of the migration (any number no other code uses).
_LOCK_KEY = 7_210_417_000_101


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The newest revision of this release."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision (None: no alembic_version)."""
    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> str:
    """Bring the database at ``engine`` to ``head()``; returns the revision it is at now."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        found = current(conn)
        if found == head():
            return found
        config = _config(conn)
        if found is None:
            if not inspect(conn).get_table_names():
                metadata.create_all(conn)
                command.stamp(config, "head")
                log.info("created the database schema at revision %s", head())
                return head()
            command.stamp(config, BASELINE)  # made by a release before migrations
            found = BASELINE
        command.upgrade(config, "head")
        log.warning("database schema upgraded from revision %s to %s", found, head())
    return head()
