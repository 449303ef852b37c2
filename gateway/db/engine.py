"""Database engines with the settings the gateway relies on, and the write probe."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

#: How long a SQLite writer waits for another's lock; a write probe waits much less.
BUSY_TIMEOUT_MS = 30_000
PROBE_BUSY_TIMEOUT_MS = 1_000

_WRITE_PROBE = text("INSERT INTO write_probe (id, at) VALUES (1, :at) ON CONFLICT (id) DO UPDATE SET at = excluded.at")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes; FULL sync because a committed bundle lets the
    # queue forget its message, so the commit must survive power loss.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    # A commit of a batch dirties ~150 index pages per message; checkpointing every 1000 WAL pages
    # (the default) copied each commit's pages into the database file right away. Every 10000
    # (~40 MB) copies a page rewritten by several commits once. Durability is the WAL's fsync either way.
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine for ``url`` (SQLite file or PostgreSQL) with the settings we rely on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an error's text never carries the values of a statement (PHI) to a log.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "postgresql":
        # TCP keepalives: a server that vanished from the network is noticed in ~25 s, not hours.
        connect_args = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10}
        connect_args |= {"keepalives_interval": 5, "keepalives_count": 3}
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=connect_args, hide_parameters=True
    )


def write_probe(engine: Engine) -> None:
    """Commit a one-row write; raises when the database cannot take writes now (unreachable,
    locked, read-only, out of disk). On SQLite a lock held by someone else fails it within a
    second instead of the writers' 30 s busy timeout: the probe asks "can I write now?"."""
    with engine.begin() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={PROBE_BUSY_TIMEOUT_MS}")
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {PROBE_BUSY_TIMEOUT_MS}")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {5 * PROBE_BUSY_TIMEOUT_MS}")
        try:
            conn.execute(_WRITE_PROBE, {"at": int(time.time() * 1000)})
        finally:
            if sqlite:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
