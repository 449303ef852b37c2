"""One grep follows a message: ``hl7gw run`` with HL7GW_LOG_FORMAT=json, a message stored and
delivered to a real remote FHIR server, and every line about it (from the listener, the worker's
pipeline and its sink delivery) names the same envelope id, sender and control id; one INFO line per
outcome."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import sample
from tests.support.gateway_process import GatewayProcess
from tests.support.mllp import send_raw
from tests.support.sekmet_server import SekmetServer, SekmetUnavailable, sekmet_executable

pytestmark = pytest.mark.slow

CONTROL_ID = "TRACE-4637382"
SENDER = "SndApp|SndFac"


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[SekmetServer]:
    try:
        sekmet_executable()
    except SekmetUnavailable as exc:
        pytest.skip(f"sekmet-fhir is not installable here: {exc}")
    server = SekmetServer(tmp_path / "remote").start()
    yield server
    server.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of the captured output (``hl7gw run`` also prints a few plain lines to stdout)."""
    return [orjson.loads(line) for line in text.split("\n") if line.startswith("{")]


def about(lines: list[dict[str, Any]], control_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("control_id") == control_id]


def test_one_grep_follows_a_message_through_listener_worker_and_sink(tmp_path: Path, remote: SekmetServer) -> None:
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env.update(
        HL7GW_LOG_FORMAT="json",
        HL7GW_LOG_LEVEL="INFO",
        HL7GW_WORKER_PROCESSES="1",
        HL7GW_FHIR_SINKS=f"remote={remote.sink_spec};mode=put",
    )
    gateway.start()
    try:
        raw = sample("v2-to-fhir-ig/ADT_A01.hl7").replace(b"|4637382|", f"|{CONTROL_ID}|".encode(), 1)
        ack = send_raw(raw, gateway.mllp_port)
        assert str(ack.segment("MSA")[1]) in ("AA", "CA")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            mine = about(json_lines(gateway.log_path.read_text()), CONTROL_ID)
            if any(line.get("outcome") == "delivered" for line in mine):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no delivered line for {CONTROL_ID}:\n{gateway.log()}")
    finally:
        gateway.stop()
    lines = json_lines(gateway.log_path.read_text())
    assert lines and all(isinstance(line["pid"], int) and line["time"].endswith("Z") for line in lines)
    assert {line["process"] for line in lines} >= {"supervisor", "mllp", "api", "worker-0"}

    mine = about(lines, CONTROL_ID)
    outcomes = sorted((line["outcome"], line["process"]) for line in mine if line["level"] != "DEBUG")
    # One line per outcome: the listener accepted it, the worker stored it, its sink thread delivered it.
    assert outcomes == [("accepted", "mllp"), ("delivered", "worker-0"), ("stored", "worker-0")], mine
    (envelope_id,) = {line["envelope_id"] for line in mine}
    assert {line["sender"] for line in mine} == {SENDER}
    delivered = next(line for line in mine if line["outcome"] == "delivered")
    assert delivered["sink"] == "remote" and delivered["logger"] == "gateway.deliver.sink_worker"
    # The envelope id finds the same lines: the id a dead letter, the archive or /admin shows.
    assert [line for line in lines if line.get("envelope_id") == envelope_id] == mine
