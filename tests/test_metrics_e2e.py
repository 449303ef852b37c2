"""Metrics end to end: ``hl7gw run`` with every process reporting through one /metrics (multiprocess
mode), and ``hl7gw mllp`` run alone serving its own on HL7GW_METRICS_PORT."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.services.embedded_redis import free_port
from tests.conftest import SAMPLES
from tests.support.gateway_process import GatewayProcess, clean_env
from tests.support.mllp import send_raw

pytestmark = pytest.mark.slow

ADT_A01 = (SAMPLES / "v2-to-fhir-ig" / "ADT_A01.hl7").read_bytes()
ORU_R01 = (SAMPLES / "v2-to-fhir-ig" / "ORU_R01.hl7").read_bytes()
TOKENS = "prom:prom-token:metrics,reader:r-token:reader,root:a-token:admin"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = "prom-token") -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def labelled(found: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in found if sample == name]


def until(url: str, condition: Callable[[Samples], bool], timeout: float, what: str, log: Callable[[], str]) -> Samples:
    deadline = time.monotonic() + timeout
    found: Samples = {}
    while time.monotonic() < deadline:
        found = scrape(url)
        if condition(found):
            return found
        time.sleep(0.5)
    names = sorted({name for name, _ in found})
    raise AssertionError(f"{what} not seen in {timeout}s: {names}\n{log()}")


def frame(raw: bytes, port: int) -> bytes:
    """Send one MLLP frame as it is and return the answer's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + raw + b"\x1c\x0d")
        reply = b""
        while not reply.endswith(b"\x1c\x0d"):
            chunk = sock.recv(4096)
            assert chunk, "closed without an answer"
            reply += chunk
    return reply


def wait_listening(port: int, timeout: float, log: Callable[[], str], alive: Callable[[], bool] = lambda: True) -> None:
    """Until something accepts connections on ``port`` (a probe connection, closed at once)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return
        except OSError:
            assert alive() and time.monotonic() < deadline, log()
            time.sleep(0.2)


@pytest.fixture
def gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-metrics-{uuid.uuid4().hex[:8]}" if external else None
    process = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace)
    # A remote sink that is down (nothing listens on its port): retried, the breaker opens,
    # and after HL7GW_SINK_MAX_AGE_S its messages become dead letters.
    process.env.update(
        HL7GW_API_TOKENS=TOKENS,
        HL7GW_FHIR_SINKS=f"down=http://127.0.0.1:{free_port()}/fhir;mode=put;timeout=1",
        HL7GW_SINK_BREAKER_FAILURES="2",
        HL7GW_SINK_BREAKER_COOLDOWN_S="60",
        HL7GW_SINK_MAX_AGE_S="6",
        HL7GW_SINK_MAX_BACKOFF_S="1",
        HL7GW_SENDER_SILENCE="SndApp|SndFac=600",
        HL7GW_WORKER_PROCESSES="2",
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_hl7gw_run_reports_every_process_through_one_metrics_endpoint(gateway: GatewayProcess) -> None:
    url = f"{gateway.base_url}/metrics"
    started = time.time()
    assert str(send_raw(ADT_A01, gateway.mllp_port).segment("MSA")[1]) == "CA"
    assert str(send_raw(ADT_A01, gateway.mllp_port).segment("MSA")[1]) == "CA"  # a duplicate
    assert str(send_raw(ORU_R01, gateway.mllp_port).segment("MSA")[1]) == "CA"
    # Refused at intake: a version not accepted (AR 203) and bytes that are no message (AR 100).
    old = b"MSH|^~\\&|OLD|SYS|GW|GW|20240101120000||ADT^A01|V-1|P|9.9\rPID|1||1^^^H\r"
    assert b"MSA|AR|V-1" in frame(old, gateway.mllp_port)
    assert b"MSA|AR" in frame(b"this is not hl7", gateway.mllp_port)
    # Accepted, but nothing to convert it to: a dead letter at conversion.
    empty = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ADT^A01^ADT_A01|DL-1|P|2.5.1\rEVN|A01|20240101120000\r"
    assert str(send_raw(empty, gateway.mllp_port).segment("MSA")[1]) == "AA"

    found = until(
        url,
        lambda f: (
            value(f, "hl7gw_sink_deliveries_total", sink="down", outcome="expired") >= 2
            and value(f, "hl7gw_dead_letters_total", stage="convert", error_type="MappingError")
            + value(f, "hl7gw_dead_letters_total", stage="convert", error_type="ValidationError")
            >= 1
        ),
        60,
        "the sink's messages expired and the conversion's dead letter",
        gateway.log,
    )

    # Intake (the listener's process).
    assert value(found, "hl7gw_messages_received_total", sender="SndApp|SndFac", message_type="ADT^A01") == 1
    assert value(found, "hl7gw_messages_received_total", sender="LabApp|LabFac", message_type="ORU^R01") == 1
    assert value(found, "hl7gw_messages_received_total", sender="LAB|HOSP", message_type="ADT^A01") == 1
    assert value(found, "hl7gw_duplicates_total", sender="SndApp|SndFac") == 1
    assert value(found, "hl7gw_acks_sent_total", code="CA") == 3
    assert value(found, "hl7gw_acks_sent_total", code="AA") == 1
    assert value(found, "hl7gw_acks_sent_total", code="AR") == 2
    assert value(found, "hl7gw_intake_rejections_total", err_code="203") == 1
    assert value(found, "hl7gw_intake_rejections_total", err_code="100") == 1
    assert value(found, "hl7gw_mllp_connections_open") == 0
    # The workers' processes.
    assert value(found, "hl7gw_messages_converted_total", message_type="ADT^A01") == 1
    assert value(found, "hl7gw_messages_converted_total", message_type="ORU^R01") == 1
    assert value(found, "hl7gw_stage_duration_seconds_count", stage="parse") >= 3
    assert value(found, "hl7gw_stage_duration_seconds_count", stage="store") == 2
    assert value(found, "hl7gw_ack_to_stored_seconds_count") == 2
    assert value(found, "hl7gw_dead_letters_total", stage="intake", error_type="RejectedAtIntake") == 2
    assert value(found, "hl7gw_dead_letters_total", stage="sink", error_type="SinkMaxAgeExceeded") == 2
    # The sink that is down: tried, refused by the breaker, then given up.
    assert value(found, "hl7gw_sink_deliveries_total", sink="down", outcome="retried") >= 2
    assert value(found, "hl7gw_sink_deliveries_total", sink="down", outcome="delivered") == 0
    assert value(found, "hl7gw_sink_request_duration_seconds_count", sink="down") >= 2
    assert value(found, "hl7gw_sink_breaker_state", sink="down") == 2  # open
    # Read at scrape time.
    assert {q["queue"] for q in labelled(found, "hl7gw_queue_depth")} == {
        "hl7",
        "hl7-replay",
        "hl7-import",
        "sink.down",
    }
    assert value(found, "hl7gw_queue_depth", queue="hl7") == 0
    assert value(found, "hl7gw_workers_alive") == 2
    assert value(found, "hl7gw_redis_up") == 1
    heard = value(found, "hl7gw_sender_last_message_timestamp_seconds", sender="SndApp|SndFac")
    assert started - 1 <= heard <= time.time() + 1
    assert value(found, "hl7gw_sender_silence_threshold_seconds", sender="SndApp|SndFac") == 600
    assert value(found, "hl7gw_sender_silence_threshold_seconds", sender="LabApp|LabFac") == 3600
    assert value(found, "hl7gw_dead_letters_open") == 5  # 2 at intake, 1 conversion, 2 for the sink
    assert value(found, "hl7gw_data_dir_free_bytes") > 0
    assert labelled(found, "hl7gw_build_info")
    # The API's own requests, by route (the scrapes so far).
    assert value(found, "hl7gw_http_requests_total", route="/metrics", method="GET", status="200") >= 1


def test_metrics_are_for_the_metrics_role_only(gateway: GatewayProcess) -> None:
    base = gateway.base_url
    assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer r-token"}).status_code == 403
    assert httpx.get(f"{base}/fhir/Patient", headers={"Authorization": "Bearer prom-token"}).status_code == 403
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert scrape(f"{base}/metrics", "a-token")


def test_a_listener_and_a_worker_run_alone_serve_their_own_metrics_ports(tmp_path: Path, redis_url: str) -> None:
    mllp_port = free_port()
    common = clean_env(
        HL7GW_REDIS_URL=redis_url,
        HL7GW_REDIS_NAMESPACE=f"hl7gw-alone-{uuid.uuid4().hex[:8]}",
        HL7GW_DATA_DIR=str(tmp_path / "data"),
        HL7GW_MLLP_PORT=str(mllp_port),
        HL7GW_LOG_LEVEL="WARNING",
        HL7GW_WORKER_THREADS="4",
    )
    common.pop("PROMETHEUS_MULTIPROC_DIR", None)
    ports = {"mllp": free_port(), "worker": free_port()}
    processes = {}
    for role, port in ports.items():
        with open(tmp_path / f"{role}.log", "wb") as log:
            processes[role] = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", role],
                env={**common, "HL7GW_METRICS_PORT": str(port)},
                stdout=log,
                stderr=log,
            )

    def logs() -> str:
        return "\n".join((tmp_path / f"{role}.log").read_text(errors="replace")[-3000:] for role in ports)

    try:
        wait_listening(mllp_port, 90, logs, alive=lambda: all(p.poll() is None for p in processes.values()))
        assert str(send_raw(ADT_A01, mllp_port).segment("MSA")[1]) == "CA"

        listener = scrape(f"http://127.0.0.1:{ports['mllp']}/metrics", token=None)
        assert value(listener, "hl7gw_messages_received_total", sender="SndApp|SndFac", message_type="ADT^A01") == 1
        assert value(listener, "hl7gw_acks_sent_total", code="CA") == 1
        assert "hl7gw_mllp_connections_open" in {name for name, _ in listener}
        assert "hl7gw_messages_converted_total" not in {name for name, _ in listener}  # the worker's, not here

        deadline = time.monotonic() + 60
        while True:
            worker = scrape(f"http://127.0.0.1:{ports['worker']}/metrics", token=None)
            if value(worker, "hl7gw_ack_to_stored_seconds_count") >= 1:
                break
            assert time.monotonic() < deadline, logs()
            time.sleep(0.3)
        assert value(worker, "hl7gw_messages_converted_total", message_type="ADT^A01") == 1
        assert value(worker, "hl7gw_stage_duration_seconds_count", stage="store") == 1
        assert value(worker, "hl7gw_messages_received_total", sender="SndApp|SndFac", message_type="ADT^A01") == 0
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(90)


def test_a_restarted_listener_keeps_its_counts_and_drops_its_open_connections(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data")  # embedded Redis: the listener is killed, not Redis
    gateway.env["HL7GW_API_TOKENS"] = TOKENS
    gateway.env["HL7GW_WORKER_PROCESSES"] = "1"
    gateway.start()
    url = f"{gateway.base_url}/metrics"
    try:
        assert str(send_raw(ADT_A01, gateway.mllp_port).segment("MSA")[1]) == "CA"
        held = socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=10)
        try:
            until(url, lambda f: value(f, "hl7gw_mllp_connections_open") == 1, 10, "the open connection", gateway.log)
            listener = next(
                pid
                for pid in gateway.descendants()
                if b"gateway.cli\x00mllp" in Path(f"/proc/{pid}/cmdline").read_bytes()
            )
            os.kill(listener, 9)
            found = until(
                url,
                lambda f: (
                    value(f, "hl7gw_mllp_connections_open") == 0
                    and any(
                        b"gateway.cli\x00mllp" in Path(f"/proc/{pid}/cmdline").read_bytes()
                        for pid in gateway.descendants()
                        if pid != listener and Path(f"/proc/{pid}").exists()
                    )
                ),
                30,
                "the restarted listener without the dead one's connection",
                gateway.log,
            )
        finally:
            held.close()
        # What the dead listener counted stays counted, and the new one counts on top of it.
        assert value(found, "hl7gw_messages_received_total", sender="SndApp|SndFac", message_type="ADT^A01") == 1
        wait_listening(gateway.mllp_port, 30, gateway.log)
        assert str(send_raw(ORU_R01, gateway.mllp_port).segment("MSA")[1]) == "CA"
        found = scrape(url)
        assert value(found, "hl7gw_acks_sent_total", code="CA") == 2
    finally:
        gateway.stop()
