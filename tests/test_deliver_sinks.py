"""Remote FHIR sinks against a real FHIR server (sekmet-fhir, started by the tests), through outages.

Acceptance: a remote sink outage of any length loses nothing. After recovery every message is
delivered once in effect, or is a dead letter with its reason; meanwhile the built-in store and the
other sinks keep flowing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from gateway.config import Settings
from gateway.convert.runtime.engine import Converter
from gateway.db.schema import sink_delivery
from gateway.deliver.remote import RemoteRejected, RemoteSink
from gateway.hl7.message import parse
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.deliveries import DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.services.embedded_redis import free_port
from gateway.sinkspec import parse_sinks
from gateway.store.resources import ResourceStore
from tests.conftest import sample
from tests.support.messages import a04
from tests.support.queue import RunningWorker, enqueue, parsed_envelope, wait_until
from tests.support.sekmet_server import SekmetServer, SekmetUnavailable, sekmet_executable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def sekmet_installed() -> None:
    try:
        sekmet_executable()
    except SekmetUnavailable as exc:
        pytest.skip(f"sekmet-fhir is not installable here: {exc}")


@pytest.fixture
def server_factory(tmp_path: Path, sekmet_installed: None) -> Iterator[Callable[[str], SekmetServer]]:
    servers: list[SekmetServer] = []

    def make(name: str) -> SekmetServer:
        server = SekmetServer(tmp_path / name).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def statuses(engine: Engine, sink: str) -> dict[str, int]:
    table = sink_delivery
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.status, func.count()).where(table.c.sink == sink).group_by(table.c.status))
        return {row[0]: int(row[1]) for row in rows}


def patient_on(server: SekmetServer, patient_id: str) -> dict[str, Any] | None:
    with server.client() as client:
        response = client.get(f"Patient/{patient_id}")
    return response.json() if response.status_code == 200 else None


def test_both_modes_store_on_the_server_and_a_refusal_keeps_its_outcome(
    server_factory: Callable[[str], SekmetServer],
) -> None:
    server = server_factory("fhir")
    bundle = Converter.load().convert(parse(sample("v2-to-fhir-ig/ADT_A01.hl7").decode()))
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]

    for mode in ("transaction", "put"):
        (spec,) = parse_sinks(f"fhir={server.sink_spec};mode={mode}")
        remote = RemoteSink(spec)
        try:
            remote.send(bundle)
        finally:
            remote.close()
        stored = patient_on(server, patient["id"])
        assert stored is not None and stored["name"] == patient["name"]

    (spec,) = parse_sinks(f"fhir={server.sink_spec}")
    bad = {**bundle, "entry": [{**bundle["entry"][0], "resource": {**patient, "gender": 5}}]}
    remote = RemoteSink(spec)
    try:
        with pytest.raises(RemoteRejected) as caught:
            remote.send(bad)
    finally:
        remote.close()
    assert caught.value.status == 400
    assert caught.value.outcome is not None and caught.value.outcome["resourceType"] == "OperationOutcome"
    (wrong_token,) = parse_sinks(f"fhir={server.base_url};auth=Bearer nope")
    remote = RemoteSink(wrong_token)
    try:
        with pytest.raises(RemoteRejected, match="HTTP 401"):
            remote.send(bundle)
    finally:
        remote.close()


def _settings(tmp_path: Path, database_url: str, namespace: str, sinks: str, **kw: Any) -> Settings:
    options: dict[str, Any] = {
        "sink_breaker_failures": 2,
        "sink_breaker_cooldown_s": 0.5,
        "sink_max_backoff_s": 1.5,
    }
    options.update(kw)
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        redis_namespace=namespace,
        worker_threads=4,
        fhir_sinks=sinks,
        **options,
    )


def test_an_outage_loses_nothing_and_holds_up_nobody_else(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    server_factory: Callable[[str], SekmetServer],
) -> None:
    flaky, steady = server_factory("flaky"), server_factory("steady")
    sinks = f"flaky={flaky.sink_spec};timeout=1;concurrency=2, steady={steady.sink_spec};mode=put"
    settings = _settings(tmp_path, database_url, redis_namespace, sinks)
    first, second = [parsed_envelope(a04(n)) for n in range(12)], [parsed_envelope(a04(n)) for n in range(12, 24)]
    store = ResourceStore(engine)

    with RunningWorker(settings, redis_url):
        flaky.pause()  # hangs: every request to it times out
        enqueue(redis_url, redis_namespace, first)
        wait_until(lambda: statuses(engine, "steady").get("delivered") == 12, 60, "steady sink flows")
        processed = [MessageArchive(engine).get(e.id) for e in first]
        assert all(m is not None and m.status == "processed" for m in processed)  # the store flows too
        assert statuses(engine, "flaky") == {"pending": 12}

        flaky.kill()  # then gone altogether: connections refused
        enqueue(redis_url, redis_namespace, second)
        wait_until(lambda: statuses(engine, "steady").get("delivered") == 24, 60, "steady sink still flows")
        assert statuses(engine, "flaky") == {"pending": 24}
        assert max(s.attempts for s in DeliveryStates(engine).pending("flaky")) >= 1

        flaky.start()  # recovery, same port, same data
        wait_until(lambda: statuses(engine, "flaky").get("delivered") == 24, 90, "flaky sink catches up")

    assert DeadLetterStore(engine).list() == []
    for number in range(24):
        (ours,) = store.search("Patient", {"identifier": [f"SINK{number}"]})
        for server in (flaky, steady):
            theirs = patient_on(server, ours["id"])
            assert theirs is not None, f"Patient {number} missing on {server.data_dir.name}"
            assert theirs["name"] == ours["name"] and theirs["identifier"] == ours["identifier"]


def test_an_outage_longer_than_the_max_age_ends_in_dead_letters_with_the_reason(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/fhir"
    settings = _settings(tmp_path, database_url, redis_namespace, f"gone={nowhere};timeout=1", sink_max_age_s=3)
    messages = [parsed_envelope(a04(n)) for n in range(5)]

    with RunningWorker(settings, redis_url):
        enqueue(redis_url, redis_namespace, messages)
        wait_until(lambda: statuses(engine, "gone").get("dead") == 5, 60, "every message a dead letter")

    letters = DeadLetterStore(engine).list()
    assert sorted(letter.envelope_id for letter in letters) == sorted(e.id for e in messages)
    for letter in letters:
        assert letter.stage == "deliver:gone"
        assert "not delivered to gone within 3 s" in letter.reason and nowhere in letter.reason
        assert letter.raw.startswith(b"MSH|")
    assert all(MessageArchive(engine).get(e.id).status == "processed" for e in messages)  # type: ignore[union-attr]


def test_hl7gw_run_delivers_to_a_configured_server(
    tmp_path: Path, server_factory: Callable[[str], SekmetServer]
) -> None:
    from tests.support.gateway_process import GatewayProcess
    from tests.support.mllp import send_raw

    server = server_factory("remote")
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env["HL7GW_FHIR_SINKS"] = f"remote={server.sink_spec};mode=put"
    gateway.start()
    try:
        ack = send_raw(sample("v2-to-fhir-ig/ADT_A01.hl7"), gateway.mllp_port)
        assert str(ack.segment("MSA")[1]) in ("AA", "CA")
        found = gateway.wait_for("/fhir/Patient?identifier=1032702", lambda b: b.get("total", 0) >= 1)
        ours = found["entry"][0]["resource"]
        wait_until(lambda: patient_on(server, ours["id"]) is not None, 30, "the Patient on the remote server")
        theirs = patient_on(server, ours["id"])
        assert theirs is not None and theirs["name"] == ours["name"]
    finally:
        gateway.stop()
