"""The audit trail's writer process: the API process hands it records over a pipe; what it holds is
written or counted as lost when it is killed, when the database cannot take it, and when the API
process is killed."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway import fhirjson
from gateway.store.access_events import Access, AuthFailure, Interaction, auth_failure_event
from gateway.store.audit_process import decode, encode
from gateway.store.audit_relay import AuditRelay
from gateway.store.resources import ResourceStore
from tests.support.queue import wait_until

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
#: A PostgreSQL nobody listens on: every write is an outage, retried until the drain gives up.
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"


def refusal() -> dict[str, Any]:
    return auth_failure_event(AuthFailure.missing, "GET", "/fhir/Patient", "10.0.0.1", NOW)


def read_of(patient: str) -> Access:
    answer = fhirjson.dumps({"resourceType": "Patient", "id": patient, "name": [{"family": "Distinctive"}]})
    request = f"GET /fhir/Patient/{patient}"
    return Access(
        Interaction.read, "ann", "reader", "10.1.2.3", "http://gw/fhir", request, answer, NOW, f"Patient/{patient}"
    )


def is_patient(entity: dict[str, Any]) -> bool:
    return entity.get("role", {}).get("code") == "1"


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def audit_events(engine: Engine) -> list[dict[str, Any]]:
    return ResourceStore(engine).search("AuditEvent", {"_count": ["1000"]})


def test_a_record_crosses_the_pipe_unchanged() -> None:
    access = read_of("p1")
    assert decode(encode(access)) == access
    event = refusal()
    assert decode(encode(event)) == event
    posted = dataclasses.replace(
        access, interaction=Interaction.search_type, request="POST /fhir/Patient/_search", parameters="family=Doe"
    )
    assert decode(encode(posted)) == posted
    everything = dataclasses.replace(access, interaction=Interaction.operation, operation="Patient-everything")
    assert decode(encode(everything)) == everything


def test_the_writer_process_writes_reads_and_refusals(engine: Engine) -> None:
    relay = AuditRelay(url_of(engine))
    assert relay.submit(read_of("p1")) and relay.submit(read_of("p2")) and relay.submit(refusal(), wait=False)

    assert relay.flush(timeout=30)
    assert (relay.pending, relay.written, relay.dropped) == (0, 3, 0)
    events = audit_events(engine)
    patients = sorted(e["what"]["reference"] for event in events for e in event["entity"] if is_patient(e))
    assert patients == ["Patient/p1", "Patient/p2"]
    assert sorted(event["type"]["code"] for event in events) == ["110114", "rest", "rest"]
    relay.close()
    assert not relay.submit(refusal())  # closed: refused and counted
    assert relay.dropped == 1


def test_a_killed_writer_loses_only_what_it_held_and_the_next_record_starts_another(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    relay = AuditRelay(url_of(engine), linger_s=60.0)  # the writer holds what it gets
    for patient in ("p1", "p2", "p3"):
        assert relay.submit(read_of(patient))
    wait_until(lambda: relay._writer is not None and relay._writer.process.pid is not None)
    first = relay._writer
    assert first is not None and first.process.pid is not None
    os.kill(first.process.pid, signal.SIGKILL)

    wait_until(lambda: relay.dropped == 3, timeout=10, what="the writer's records counted as lost")
    assert relay.pending == 0 and relay.written == 0
    assert any("3 record(s) could not be written (the writer process ended)" in r.getMessage() for r in caplog.records)

    assert relay.submit(read_of("p4"))  # a new writer
    assert relay.flush(timeout=30)
    assert relay._writer is not first
    assert (relay.written, relay.dropped) == (1, 3)
    (event,) = audit_events(engine)
    assert {"what": {"reference": "Patient/p4"}}.items() <= event["entity"][0].items()
    relay.close()


def test_a_database_that_cannot_take_writes_fills_the_relay_which_then_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway")
    relay = AuditRelay(UNREACHABLE, capacity=4, block_s=0.1, drain_s=0.5, linger_s=0.01)
    assert relay.submit(refusal(), wait=False) and relay.submit(refusal(), wait=False)
    assert not relay.submit(refusal(), wait=False)  # failed logins may fill only half, and never wait
    assert relay.submit(read_of("p1")) and relay.submit(read_of("p2"))
    started = time.monotonic()
    assert not relay.submit(read_of("p3"))  # full: waited block_s for room, then refused
    assert time.monotonic() - started >= 0.1
    assert (relay.pending, relay.dropped) == (4, 2)

    relay.close()  # the writer tries for drain_s, then gives up what it holds and says so
    assert (relay.pending, relay.written, relay.dropped) == (0, 0, 6)
    assert sum("a record was refused" in r.getMessage() for r in caplog.records) == 2


#: A process that hands the writer records and is then killed: nothing of its own gets to run.
KILLED_API = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from tests.test_audit_relay import read_of
    from gateway.store.audit_relay import AuditRelay
    relay = AuditRelay(sys.argv[1], linger_s=60.0)
    for n in range(50):
        assert relay.submit(read_of(f"p{n}"))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_what_a_killed_api_process_handed_over_is_written(engine: Engine, tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    # NOW is this module's import time, long before this test in a whole run: the child has its own.
    started = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=5)
    api = subprocess.run([sys.executable, "-c", KILLED_API, url_of(engine), root], timeout=120, check=False)
    assert api.returncode == -signal.SIGKILL

    wait_until(lambda: len(audit_events(engine)) == 50, timeout=30, what="the writer drained after the API died")
    recorded = [datetime.fromisoformat(event["recorded"].rstrip("Z")) for event in audit_events(engine)]
    assert all(started <= moment <= datetime.now(UTC).replace(tzinfo=None) for moment in recorded)


def test_a_writer_that_does_not_start_refuses_the_record(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    relay = AuditRelay(url_of(engine), log_level="NO-SUCH-LEVEL")  # the writer fails while setting up

    assert not relay.submit(read_of("p1"))  # fail closed: the API answers 503 rather than the data
    assert (relay.pending, relay.dropped) == (0, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("the writer process did not start (exit code 1)" in m for m in messages), messages
    relay.close()
