"""The failure policy: one decision per exception class, and texts that never quote data."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from gateway.deliver.remote import RemoteRejected, RemoteUnavailable
from gateway.errors import (
    CharsetError,
    ConfigError,
    DeliveryError,
    IntakeUnavailable,
    MappingError,
    ParseError,
    Policy,
    QueueUnavailable,
    RejectedAtIntake,
    StageCrash,
    StoreUnavailable,
    TransientDeliveryError,
    ValidationError,
    describe,
    policy_of,
    unavailable_dependency,
)
from gateway.services.outages import Gate, Outages

PHI = "Zyxwarth^Quenbelle"


@pytest.mark.parametrize(
    ("exc", "policy"),
    [
        (ParseError("segment 2 has no valid segment name"), Policy.PERMANENT),
        (CharsetError("byte 0xFF at offset 9"), Policy.PERMANENT),
        (MappingError("no PID"), Policy.PERMANENT),
        (ValidationError("Patient/x: birthDate: invalid value"), Policy.PERMANENT),
        (DeliveryError("database rejected the bundle"), Policy.PERMANENT),
        (RemoteRejected("HTTP 422", stage="deliver:x", status=422, outcome=None), Policy.PERMANENT),
        (RejectedAtIntake("AR 203"), Policy.PERMANENT),
        (StageCrash("convert", KeyError("x")), Policy.PERMANENT),
        (KeyError("a bug"), Policy.PERMANENT),
        (TransientDeliveryError("HTTP 503"), Policy.RETRY),
        (RemoteUnavailable("HTTP 503", stage="deliver:x"), Policy.RETRY),
        (StoreUnavailable("database unavailable"), Policy.OUTAGE),
        (QueueUnavailable("redis unavailable"), Policy.OUTAGE),
        (IntakeUnavailable("durable queue unavailable"), Policy.OUTAGE),
        (OperationalError("SELECT 1", {}, Exception("connection refused")), Policy.OUTAGE),
        (redis.ConnectionError("Connection refused"), Policy.OUTAGE),
        (redis.TimeoutError("Timeout reading from socket"), Policy.OUTAGE),
        (redis.ResponseError("MISCONF Errors writing to the AOF file: No space left on device"), Policy.OUTAGE),
        (redis.ResponseError("LOADING Redis is loading the dataset in memory"), Policy.OUTAGE),
        (redis.ResponseError("ERR wrong number of arguments"), Policy.PERMANENT),
    ],
)
def test_one_policy_per_exception_class(exc: BaseException, policy: Policy) -> None:
    assert policy_of(exc) is policy


def test_outages_name_their_dependency() -> None:
    assert unavailable_dependency(StoreUnavailable("x")) == "database"
    assert unavailable_dependency(OperationalError("SELECT 1", {}, Exception("gone"))) == "database"
    assert unavailable_dependency(redis.ConnectionError("gone")) == "redis"
    assert unavailable_dependency(QueueUnavailable("x")) == "redis"
    assert unavailable_dependency(ValueError("x")) is None


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_describe_never_repeats_what_a_foreign_exception_says(words: str) -> None:
    for kind in (KeyError, ValueError, RuntimeError, TypeError):
        # Raised from the same line with any words, the description is the same: it carries none.
        assert describe(_raised(kind(words))) == describe(_raised(kind("-")))
        crash, same = StageCrash("convert", _raised(kind(words))), StageCrash("convert", _raised(kind("-")))
        assert describe(crash) == describe(same)


def test_describe_says_where_a_bug_was_raised() -> None:
    text_ = describe(_raised(KeyError(PHI)))
    assert text_.startswith("KeyError at test_failure_policy.py:") and "(_raised)" in text_ and PHI not in text_


def test_describe_leaves_out_the_values_a_database_error_quotes(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE phi_probe (name VARCHAR(64) PRIMARY KEY, born BIGINT)"))
        conn.execute(text("INSERT INTO phi_probe VALUES (:n, 1)"), {"n": PHI})
    with pytest.raises(IntegrityError) as duplicate:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO phi_probe VALUES (:n, 2)"), {"n": PHI})
    assert "Zyxwarth" not in describe(duplicate.value)
    assert "phi_probe" in describe(duplicate.value) or "SQLSTATE 23505" in describe(duplicate.value)
    if engine.dialect.name == "postgresql":  # its messages quote inputs: "invalid input syntax ... 'Zyx...'"
        with pytest.raises(SQLAlchemyError) as bad_input:
            with engine.begin() as conn:
                conn.execute(text("SELECT CAST(:n AS BIGINT)"), {"n": PHI})
        assert "Zyxwarth" not in describe(bad_input.value) and "SQLSTATE 22P02" in describe(bad_input.value)


def test_remote_errors_keep_the_servers_words_for_the_dead_letter_but_not_for_logs() -> None:
    rejected = RemoteRejected(
        f"POST http://fhir/: HTTP 422: {PHI} is not valid",
        stage="deliver:x",
        status=422,
        outcome=None,
        summary="POST http://fhir/: HTTP 422",
    )
    assert PHI in str(rejected) and describe(rejected) == "POST http://fhir/: HTTP 422"


class _Dependency:
    def __init__(self) -> None:
        self.up = True
        self.probes = 0

    def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise ConnectionError("down")


def test_a_failure_whose_dependency_answers_is_not_an_outage() -> None:
    dependency = _Dependency()
    gate = Gate("database", dependency.probe, min_backoff_s=0.01, max_backoff_s=0.05)
    assert gate.report(StoreUnavailable("blip")) is False
    assert gate.is_open and dependency.probes == 1


def test_an_outage_closes_the_gate_once_and_opens_it_when_the_probe_passes(caplog: pytest.LogCaptureFixture) -> None:
    dependency = _Dependency()
    recovered = threading.Event()
    gate = Gate("database", dependency.probe, min_backoff_s=0.01, max_backoff_s=0.05, on_recovery=[recovered.set])
    outages = Outages([gate])
    dependency.up = False
    caplog.set_level(logging.INFO, logger="gateway.services.outages")

    results: list[bool] = []

    def hold() -> None:
        results.append(outages.hold(StoreUnavailable("down")))

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert not gate.is_open and results == []  # every thread waits, none gives up
    assert dependency.probes >= 3  # probing goes on, with backoff
    dependency.up = True
    for thread in threads:
        thread.join(5)
    assert results == [True] * 8 and gate.is_open and recovered.is_set()
    warnings = [r for r in caplog.records if r.name == "gateway.services.outages" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one when it went down, one when it came back, for 8 threads
    assert "unavailable" in warnings[0].getMessage() and "answers again" in warnings[1].getMessage()
    gate.stop()


def test_hold_ignores_what_is_not_an_outage() -> None:
    dependency = _Dependency()
    dependency.up = False
    outages = Outages([Gate("database", dependency.probe)])
    assert outages.hold(ParseError("x")) is False and outages.hold(KeyError("x")) is False
    assert dependency.probes == 0


def test_the_write_probe_fails_fast_on_a_locked_database(engine: Engine) -> None:
    from gateway.db.engine import write_probe

    write_probe(engine)
    blocker = engine.connect()
    if engine.dialect.name == "sqlite":
        blocker.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        blocker.execute(text("LOCK TABLE write_probe IN ACCESS EXCLUSIVE MODE"))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught:
            write_probe(engine)
        assert time.monotonic() - started < 5  # not the writers' 30 s busy timeout
        assert unavailable_dependency(caught.value) == "database"
    finally:
        blocker.rollback()
        blocker.close()
    write_probe(engine)  # and the connection it used waits as long as a writer again
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_a_start_waits_for_its_database_and_fails_on_anything_else(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.services.outages import until_available

    calls: list[int] = []

    def start() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StoreUnavailable("not yet")
        return "started"

    caplog.set_level(logging.WARNING, logger="gateway.services.outages")
    assert until_available("database", start, max_backoff_s=0.05) == "started"
    ours = [r.getMessage() for r in caplog.records if r.name == "gateway.services.outages"]
    assert len([m for m in ours if "unavailable" in m]) == 1

    def broken() -> None:
        raise ConfigError("no such role")

    with pytest.raises(ConfigError):
        until_available("database", broken, max_backoff_s=0.05)

    attempts: list[int] = []

    def down_then_broken() -> None:
        attempts.append(1)
        raise StoreUnavailable("down") if len(attempts) < 3 else ConfigError("permission denied")

    with pytest.raises(ConfigError):  # once the database answers, its real complaint is raised
        until_available("database", down_then_broken, max_backoff_s=0.05)
