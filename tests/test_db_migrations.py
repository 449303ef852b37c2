"""Schema migrations: a database of the previous release is upgraded without loss, the migrations
end at exactly the schema of gateway/db/schema.py, and migrate() at the newest revision is a no-op."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, func, inspect, select
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.migrate import BASELINE, _config, current, head, migrate
from gateway.db.schema import message_archive, metadata
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.messages import MessageArchive
from gateway.store.resources import ResourceStore
from tests.support.fhir_bundles import patient, put, transaction
from tests.support.gateway_process import clean_env

DATA = Path(__file__).resolve().parent / "data"


def differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate sees between the database and gateway/db/schema.py."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def previous_release(engine: Engine) -> None:
    """The tables exactly as release ce29ab1 made them (create_all, no alembic_version), with a row each."""
    lines = (DATA / f"schema_ce29ab1_{engine.dialect.name}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in (part.strip() for part in ddl.split(";")):
            if statement:
                conn.exec_driver_sql(statement)
        # Rows as that release wrote them: into its tables, not this release's (columns added since).
        old = MetaData()
        old.reflect(conn)
        fhir_resource, message_archive, dead_letter = (
            old.tables[name] for name in ("fhir_resource", "message_archive", "dead_letter")
        )
        conn.execute(
            fhir_resource.insert().values(
                type="Patient",
                id="p-old",
                version_id=3,
                last_updated=datetime(2026, 11, 1, 12),
                deleted=False,
                content_hash="h",
                content='{"resourceType":"Patient","id":"p-old","meta":{"versionId":"3"}}',
            )
        )
        conn.execute(
            message_archive.insert().values(
                id="m-old",
                sender="ADT|HOSP",
                control_id="C1",
                seq=7,
                message_type="ADT^A01",
                peer="",
                received_at=1,
                raw=b"MSH|old",
                status="processed",
                attempts=1,
                updated_at=1,
                detail="",
            )
        )
        conn.execute(
            dead_letter.insert().values(
                id="d-old",
                envelope_id="m-2",
                sender="ADT|HOSP",
                control_id="C2",
                stage="convert",
                reason="no PID",
                error_type="MappingError",
                attempts=1,
                created_at=1,
                status="open",
                raw=b"MSH|bad",
            )
        )


def test_a_new_database_is_made_at_the_newest_revision(engine: Engine) -> None:
    with engine.connect() as conn:
        assert current(conn) == head()
    assert differences(engine) == []
    assert migrate(engine) == head()  # again: nothing to do


def test_a_database_of_the_previous_release_is_upgraded_without_loss(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        previous_release(engine)
        with engine.connect() as conn:
            assert current(conn) is None and "write_probe" not in inspect(conn).get_table_names()

        assert migrate(engine) == head()

        with engine.connect() as conn:
            assert current(conn) == head()
            assert conn.execute(select(func.count()).select_from(message_archive)).scalar_one() == 1
        archived = MessageArchive(engine).get("m-old")
        assert archived is not None and (archived.raw, archived.status, archived.notes) == (b"MSH|old", "processed", "")
        assert differences(engine) == []  # exactly the schema of this release
        store = ResourceStore(engine)
        assert store.read("Patient", "p-old")["meta"]["versionId"] == "3"  # type: ignore[index]
        store.apply_bundle(transaction(put(patient("p-new", "MRN-NEW"))))  # and it works as one
        assert store.read("Patient", "p-new") is not None
        (letter,) = DeadLetterStore(engine).list()
        assert (letter.id, letter.reason, letter.raw) == ("d-old", "no PID", b"MSH|bad")
    finally:
        engine.dispose()


def test_the_migrations_alone_end_at_the_schema(database_url: str) -> None:
    # migrate() makes an empty database with create_all; here every migration runs from nothing,
    # as it would for a database made by the first release.
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), "head")
        with engine.connect() as conn:
            assert current(conn) == head()
        assert differences(engine) == []
        with engine.begin() as conn:
            command.downgrade(_config(conn), BASELINE)
            assert "write_probe" not in inspect(conn).get_table_names()
            command.upgrade(_config(conn), "head")
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_hl7gw_migrate_says_where_the_database_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    previous_release(engine)
    engine.dispose()
    env = clean_env(HL7GW_DATA_DIR=str(tmp_path), HL7GW_DATABASE_URL=url)
    first = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], capture_output=True, env=env, timeout=120)
    second = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate"], capture_output=True, env=env, timeout=120)
    assert first.returncode == 0 and second.returncode == 0, first.stderr.decode()
    assert f"upgraded from revision none to {head()}".encode() in first.stdout
    assert f"at revision {head()} (the newest)".encode() in second.stdout


def reflected(engine: Engine) -> dict[str, object]:
    """Tables as the database describes them: columns (type, nullable), primary key, indexes."""
    with engine.connect() as conn:
        found = inspect(conn)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                found.get_pk_constraint(table)["constrained_columns"],
                sorted((i["name"], tuple(i["column_names"])) for i in found.get_indexes(table)),
            )
            for table in sorted(found.get_table_names())
            if table != "alembic_version"
        }


def test_the_baseline_migration_makes_what_the_previous_release_made(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    try:
        previous_release(engine)
        old = reflected(engine)
    finally:
        engine.dispose()
    other = f"sqlite:///{tmp_path / 'baseline.sqlite3'}" if database_url.startswith("sqlite") else None
    if other is None:  # PostgreSQL: a second private schema
        from tests.conftest import postgres_schema

        with postgres_schema(database_url.split("?")[0]) as url:
            assert reflected_at_baseline(url) == old
        return
    assert reflected_at_baseline(other) == old


def reflected_at_baseline(url: str) -> dict[str, object]:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), BASELINE)
        return reflected(engine)
    finally:
        engine.dispose()
