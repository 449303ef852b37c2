"""No patient data in any log line: ``hl7gw run`` at DEBUG, in both log formats, messages full of
distinctive PHI through every path (stored, dead-lettered at each stage, refused at intake, sent to
a remote FHIR server that refuses them quoting the data back, and to one that is down, searched for
over the API), and not one of the values appears in the output: plain, HL7-escaped, as Python
would repr it, or inside anything base64 (dramatiq's own log lines used to carry whole envelopes,
raw message included).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from gateway.db.engine import make_engine
from gateway.db.schema import dead_letter, message_archive
from gateway.mllp.client import send_messages
from gateway.services.embedded_redis import free_port
from tests.support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

#: Values no code or library would print by chance. Each is checked in every form below.
PHI = [
    "Quixbartley",  # family name
    "Zenobiah",  # given name
    "Ørnvikke",  # a name outside ASCII (its UTF-8 bytes and escapes are checked too)
    "19310417",  # birth date as v2 writes it
    "1931-04-17",  # and as FHIR does
    "MRN7741925",  # medical record number
    "987654329",  # social security number
    "Wisteriavale",  # street
    "Pollenford",  # city
    "5550199441",  # phone
    "Vandermeulen",  # mother's maiden name
    "xylophonic",  # free text of a note
    "Thistlewaite",  # next of kin
]


def message(control_id: str, *, version: str = "2.5.1", kind: str = "ADT^A04^ADT_A01", pid: bool = True) -> bytes:
    segments = [
        f"MSH|^~\\&|REG|PHIHOSP|GW|GW|20240501120000||{kind}|{control_id}|P|{version}||||||UNICODE UTF-8",
        "EVN|A04|20240501120000",
    ]
    if pid:
        segments.append(
            "PID|1||MRN7741925^^^PHIHOSP^MR~987654329^^^SSA^SS||Quixbartley^Zenobiah^Ørnvikke||19310417|F|||"
            "4217 Wisteriavale Crescent^^Pollenford^NY^12345||^PRN^PH^^^555^0199441|||||||987654329|||Vandermeulen"
        )
    segments += [
        "NK1|1|Thistlewaite^Ambrose|SPO",
        "PV1|1|I|WARD^101^A",
        "NTE|1||Patient reports xylophonic tinnitus; escaped O\\T\\Quixbartley and Pollenford\\F\\Wisteriavale",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def messages() -> list[bytes]:
    return [
        message("PHI-OK-1"),  # converted and stored
        message("PHI-OK-1"),  # the same again: a duplicate
        message("PHI-OK-1").replace(b"xylophonic", b"xylophonic!"),  # same control id, other content
        message("PHI-NOPID", pid=False).replace(b"NK1|1|", b"NK1|1|Quixbartley^Zenobiah|"),  # no patient: convert fails
        message("PHI-VERSION", version="9.9"),  # refused at intake: version
        message("PHI-TYPE", kind="ZZZ^Z99^ZZZ_Z99"),  # refused at intake: no mapping
        message("PHI-SEGMENT").replace(b"\rPV1|", b"\rQuixbartley Zenobiah 19310417|"),  # unreadable segment name
        message("PHI-CHARSET").replace("Ørnvikke".encode(), b"\xd8rnvikke\xff"),  # not UTF-8 as MSH-18 says
    ]


def forms(value: str) -> set[str]:
    """How ``value`` could look in a log line: as it is, escaped for HL7 v2, repr'd as text and as bytes."""
    found = {value, value.lower(), value.upper(), repr(value)[1:-1], repr(value.encode("utf-8"))[2:-1]}
    found.add(value.encode("unicode_escape").decode("ascii"))
    found.add(value.encode("utf-8").hex())
    return {form for form in found if len(form) >= 6}


def decoded_base64_runs(text: str) -> list[bytes]:
    """Every run that looks like base64 in ``text``, decoded (both alphabets, any padding)."""
    out = []
    for run in re.findall(r"[A-Za-z0-9+/_=-]{12,}", text):
        stripped = run.rstrip("=")
        for start in range(4):  # the run may start inside a longer encoded text
            chunk = stripped[start:]
            chunk += "=" * (-len(chunk) % 4)
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                try:
                    out.append(decode(chunk))
                except (binascii.Error, ValueError):
                    pass
    return out


class _Refuser(http.server.BaseHTTPRequestHandler):
    """A remote FHIR server that refuses everything, quoting the patient data back: first a 503
    (retried), then 422 (a dead letter), each with an OperationOutcome naming the values."""

    answered = 0

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).answered += 1
        status = 503 if type(self).answered == 1 else 422
        issue = {"severity": "error", "code": "invalid", "diagnostics": f"Patient {' '.join(PHI)} is not welcome"}
        body = orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet, it is not the gateway's log
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuser)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_phi_in_any_log_line_at_debug(tmp_path: Path, log_format: str, refusing_server: str) -> None:
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env["HL7GW_LOG_LEVEL"] = "DEBUG"
    gateway.env["HL7GW_LOG_FORMAT"] = log_format
    # The NTE after PV1 fits nowhere in ADT_A01: noted (not refused), so that the message is stored.
    gateway.env["HL7GW_UNPLACED_SEGMENTS"] = "note"
    # Two remote sinks: one refuses quoting the data, one is down (nothing listens) until the
    # messages are too old for it: both end in dead letters whose reasons the log must not repeat.
    down = f"http://127.0.0.1:{free_port()}/fhir"
    gateway.env["HL7GW_FHIR_SINKS"] = f"refuser={refusing_server};mode=put;timeout=2,down={down};mode=put;timeout=2"
    gateway.env.update(HL7GW_SINK_MAX_AGE_S="3", HL7GW_SINK_MAX_BACKOFF_S="1", HL7GW_WORKER_PROCESSES="1")
    gateway.start()
    try:
        sent = messages()
        results = asyncio.run(send_messages(sent, "127.0.0.1", gateway.mllp_port, timeout=30))
        codes = [r.code for r in results]
        assert codes[:4] == ["AA", "AA", "AA", "AA"], codes
        assert codes[4:6] == ["AR", "AR"], codes  # the others: AA (unreadable bits become dead letters) or AR
        _wait_until_handled(gateway, 5)  # stored, reused control id, no PID; and the kept rejections
        _wait_for_sink_letters(gateway, 4)  # the two stored messages, at each sink
        with gateway.client() as client:  # PHI in query strings and paths reaches the API too
            found = client.get("/fhir/Patient", params={"family": "Quixbartley", "birthdate": "1931-04-17"}).json()
            assert found["total"] == 1
            assert client.get("/fhir/Patient", params={"identifier": "MRN7741925"}).json()["total"] == 1
            assert client.get("/fhir/Patient", params={"family:bogus": "Zenobiah"}).status_code == 400
            assert client.get("/fhir/Patient/Quixbartley").status_code == 404
            assert client.get("/fhir/Patient", params={"birthdate": "19310417x"}).status_code == 400
    finally:
        gateway.stop()
    output = gateway.log_path.read_bytes().decode("utf-8", errors="replace")

    if log_format == "json":
        lines = [orjson.loads(line) for line in output.split("\n") if line.startswith("{")]
        assert len(lines) > 50 and all(line["time"] and line["process"] for line in lines)
        assert any(line["level"] == "DEBUG" and line["message"].startswith("Received message ") for line in lines)
        outcomes = {line.get("outcome") for line in lines}
    else:  # it really ran at DEBUG, and names the messages it is about
        assert " DEBUG " in output and "dramatiq.worker.WorkerThread: Received message " in output
        assert "accepted ADT^A04 [envelope=" in output and " sender=REG|PHIHOSP control_id=PHI-OK-1]" in output
        outcomes = {"sink-refused" if "not delivered to refuser: RemoteRejected" in output else None}
        outcomes.add("sink-expired" if "not delivered to down: SinkMaxAgeExceeded" in output else None)
        outcomes.add("sink-retry" if "refuser: message " in output and "HTTP 503" in output else None)
    assert {"sink-refused", "sink-expired", "sink-retry"} <= outcomes  # the remote paths ran
    assert "dead letter" in output and "PHI-NOPID" in output  # control ids may be named
    lowered = output.lower()
    leaks = sorted({value for value in PHI for form in forms(value) if form.lower() in lowered})
    assert leaks == [], f"PHI in the log: {leaks}"
    decoded = b"\n".join(decoded_base64_runs(output))
    hidden = sorted(value for value in PHI if value.encode("utf-8") in decoded)
    assert hidden == [], f"PHI base64-encoded in the log: {hidden}"


def _wait_until_handled(gateway: GatewayProcess, at_least: int, timeout: float = 60.0) -> None:
    """Until ``at_least`` archived messages left the "received" state."""
    engine = make_engine(f"sqlite:///{gateway.data_dir / 'hl7gw.sqlite3'}")
    table = message_archive
    try:
        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done = conn.execute(select(func.count()).where(table.c.status != "received")).scalar_one()
            if done >= at_least:
                time.sleep(1.0)  # let the last log lines be written
                return
            time.sleep(0.1)
        raise AssertionError(f"{done} handled after {timeout}s\n{gateway.log()}")
    finally:
        engine.dispose()


def _wait_for_sink_letters(gateway: GatewayProcess, at_least: int, timeout: float = 60.0) -> None:
    """Until ``at_least`` dead letters of remote sinks are written."""
    engine = make_engine(f"sqlite:///{gateway.data_dir / 'hl7gw.sqlite3'}")
    try:
        deadline = time.monotonic() + timeout
        found = 0
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                query = select(func.count()).where(dead_letter.c.stage.startswith("deliver:"))
                found = conn.execute(query).scalar_one()
            if found >= at_least:
                time.sleep(1.0)  # let the last log lines be written
                return
            time.sleep(0.1)
        raise AssertionError(f"{found} sink dead letters after {timeout}s\n{gateway.log()}")
    finally:
        engine.dispose()
