"""End to end: ``hl7gw run`` as a subprocess, real MLLP clients over TCP, FHIR read back over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import hl7
import pytest

from tests.conftest import SAMPLES
from tests.support.gateway_process import GatewayProcess, clean_env
from tests.support.mllp import send_raw

pytestmark = pytest.mark.slow

ADT_A01 = SAMPLES / "v2-to-fhir-ig" / "ADT_A01.hl7"
ORU_R01 = SAMPLES / "v2-to-fhir-ig" / "ORU_R01.hl7"


def mllp_send_loose(path: Path, port: int) -> str:
    """Send with python-hl7's own command-line client, as an interface engineer would."""
    mllp_send = Path(sys.executable).parent / "mllp_send"
    result = subprocess.run(
        [str(mllp_send), "--loose", "--file", str(path), "--port", str(port), "127.0.0.1"],
        capture_output=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def msa(ack_text: str) -> list[str]:
    for segment in ack_text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            return segment.split("|")
    raise AssertionError(f"no MSA in {ack_text!r}")


def find_patient(gateway: GatewayProcess, identifier: str, timeout: float = 10.0) -> dict:
    bundle = gateway.wait_for(f"/fhir/Patient?identifier={identifier}", lambda b: b.get("total", 0) >= 1, timeout)
    assert bundle["total"] == 1
    return bundle["entry"][0]["resource"]


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str):  # type: ignore[no-untyped-def]
    # On machines with an external Redis the gateway uses it (under a namespace of its own);
    # elsewhere this is the embedded default that a user gets from `hl7gw run`.
    external = os.environ.get("HL7GW_REDIS_URL")
    namespace = f"hl7gw-e2e-{uuid.uuid4().hex[:8]}" if external else None
    process = GatewayProcess(tmp_path / "data", redis_url=external, namespace=namespace).start()
    try:
        yield process
    finally:
        process.stop()


def test_adt_and_oru_in_fhir_out(gateway: GatewayProcess) -> None:
    ack = mllp_send_loose(ADT_A01, gateway.mllp_port)
    fields = msa(ack)
    assert fields[1] == "CA" and fields[2] == "4637382"  # MSH-15 AL: enhanced mode

    patient = find_patient(gateway, "1032702")
    assert patient["name"][0]["family"] == "Everywoman"
    assert patient["name"][0]["given"][0] == "Eve"
    assert patient["birthDate"] == "1970-06-01"
    assert patient["gender"] == "female"
    assert patient["meta"]["versionId"] == "1"

    oru_ack = send_raw(ORU_R01.read_bytes(), gateway.mllp_port)
    assert str(oru_ack.segment("MSA")[1]) == "CA"
    assert str(oru_ack.segment("MSA")[2]) == "20251014154001-425"
    assert str(oru_ack.segment("MSH")[9]) == "ACK^R01^ACK"

    # The ORU names the same patient under another assigning authority; find its Patient, then
    # its Observations by reference.
    bundle = gateway.wait_for("/fhir/Observation?code=6153-1", lambda b: b.get("total", 0) >= 1)
    observation = bundle["entry"][0]["resource"]
    assert observation["valueQuantity"]["value"] == 3.9
    subject = observation["subject"]["reference"]
    patient_id = subject.split("/")[1]
    observations = gateway.wait_for(f"/fhir/Observation?patient={patient_id}", lambda b: b.get("total", 0) >= 3)
    codes = sorted(o["resource"]["code"]["coding"][0]["code"] for o in observations["entry"])
    assert codes == ["6041-8", "6153-1", "6265-3"]


def wait_processed(gateway: GatewayProcess, count: int, timeout: float = 15.0) -> list[str]:
    """Wait until ``count`` archived messages finished the pipeline; returns their statuses."""
    from sqlalchemy import select

    from gateway.db.engine import make_engine
    from gateway.db.schema import message_archive

    engine = make_engine(f"sqlite:///{gateway.data_dir / 'hl7gw.sqlite3'}")
    try:
        deadline = time.monotonic() + timeout
        statuses: list[str] = []
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                statuses = [r.status for r in conn.execute(select(message_archive.c.status))]
            if len([s for s in statuses if s != "received"]) >= count:
                return statuses
            time.sleep(0.05)
        raise AssertionError(f"only {statuses} after {timeout}s\n{gateway.log()}")
    finally:
        engine.dispose()


def test_same_message_twice_is_one_version(gateway: GatewayProcess) -> None:
    # Resent as is: a duplicate at intake (the same ACK again, not enqueued again).
    for _ in range(2):
        assert msa(mllp_send_loose(ADT_A01, gateway.mllp_port))[1] == "CA"
    # The same content under a new MSH-10 is a new message: applied idempotently downstream.
    resent = ADT_A01.read_bytes().replace(b"|4637382|", b"|4637382-2|")
    assert str(send_raw(resent, gateway.mllp_port).segment("MSA")[1]) == "CA"
    assert wait_processed(gateway, 2) == ["processed", "processed"]
    patient = find_patient(gateway, "1032702")
    assert patient["meta"]["versionId"] == "1"


def test_unreadable_frame_gets_ar_with_err(gateway: GatewayProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", gateway.mllp_port), timeout=10) as sock:
        sock.sendall(b"\x0bthis is not hl7\x1c\x0d")
        reply = b""
        while not reply.endswith(b"\x1c\x0d"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an answer"
            reply += chunk
    text = reply.strip(b"\x0b\x1c\x0d").decode()
    assert msa(text)[1] == "AR"
    assert "\rERR|" in text


def test_nothing_acknowledged_is_lost_on_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gateway = GatewayProcess(data).start()  # embedded Redis: this test kills it too
    try:
        # Stop the workers first, so the acknowledged message is certainly still only queued
        # when everything dies.
        for pid in gateway.descendants():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"gateway.cli\x00worker" in cmdline:
                os.kill(pid, 19)  # SIGSTOP
        assert msa(mllp_send_loose(ADT_A01, gateway.mllp_port))[1] == "CA"
        gateway.kill_tree()
    finally:
        if gateway.process and gateway.process.poll() is None:
            gateway.kill_tree()

    restarted = GatewayProcess(data)
    restarted.mllp_port, restarted.http_port = gateway.mllp_port, gateway.http_port
    restarted.env.update(HL7GW_MLLP_PORT=str(gateway.mllp_port), HL7GW_HTTP_PORT=str(gateway.http_port))
    restarted.start()
    try:
        patient = find_patient(restarted, "1032702")
        assert patient["name"][0]["family"] == "Everywoman"
    finally:
        restarted.stop()


def test_unconvertible_message_becomes_a_dead_letter(gateway: GatewayProcess) -> None:
    # Accepted at intake (the header is fine), but there is no patient to convert.
    raw = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ADT^A01^ADT_A01|DL-1|P|2.5.1\rEVN|A01|20240101120000\r"
    ack = send_raw(raw, gateway.mllp_port)
    assert str(ack.segment("MSA")[1]) == "AA"
    assert wait_processed(gateway, 1) == ["failed"]

    listing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "dlq", "list"],
        capture_output=True,
        timeout=60,
        env=clean_env(HL7GW_DATA_DIR=str(gateway.data_dir)),
    )
    assert listing.returncode == 0, listing.stderr.decode()
    lines = [line for line in listing.stdout.decode().splitlines() if "DL-1" in line]
    assert len(lines) == 1
    assert " convert " in lines[0]
    assert "LAB|HOSP" in lines[0]


def _hl7gw(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    """An operator command against the running gateway (its data directory, Redis and namespace)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, timeout=120, env=dict(gateway.env)
    )


def test_a_dead_letter_fixed_and_replayed_becomes_searchable_and_a_reprocess_changes_nothing(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    broken = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ADT^A01^ADT_A01|DL-2|P|2.5.1\rPID|1||||Doe^Jane\r"
    assert str(send_raw(broken, gateway.mllp_port).segment("MSA")[1]) == "AA"
    assert wait_processed(gateway, 1) == ["failed"]
    listing = _hl7gw(gateway, "dlq", "list")
    (letter_id,) = [line.split()[0] for line in listing.stdout.decode().splitlines() if "DL-2" in line]

    fixed = tmp_path / "fixed.hl7"
    fixed.write_bytes(broken.replace(b"PID|1||||", b"PID|1||RP-1^^^HOSP^MR||"))
    replay = _hl7gw(gateway, "dlq", "replay", letter_id, "--raw", str(fixed))
    assert replay.returncode == 0, replay.stderr.decode()
    patient = find_patient(gateway, "RP-1", timeout=30)
    assert patient["meta"]["versionId"] == "1"
    assert _hl7gw(gateway, "dlq", "replay", letter_id).returncode == 1  # replayed already
    shown = _hl7gw(gateway, "dlq", "show", letter_id).stdout.decode()
    assert "status: replayed" in shown and "replayed as: message" in shown and "PID|1||||Doe^Jane" in shown
    assert "--- the edited message it was replayed with ---\n" in shown and "PID|1||RP-1^^^HOSP^MR" in shown

    # The same by REST: another broken message, replayed edited through /admin by the admin token.
    other = broken.replace(b"DL-2", b"DL-3")
    assert str(send_raw(other, gateway.mllp_port).segment("MSA")[1]) == "AA"
    assert sorted(wait_processed(gateway, 3)) == ["failed", "failed", "processed"]
    with gateway.client() as api:
        (letter,) = [d for d in api.get("/admin/dead-letters?status=open").json()["items"] if d["control_id"] == "DL-3"]
        edited = other.replace(b"PID|1||||", b"PID|1||RP-2^^^HOSP^MR||").decode()
        replayed = api.post(f"/admin/dead-letters/{letter['id']}/replay", json={"raw": edited})
        assert replayed.status_code == 202, replayed.text
        assert find_patient(gateway, "RP-2", timeout=30)["name"][0]["family"] == "Doe"
        again = api.post(f"/admin/dead-letters/{letter['id']}/replay")
        assert again.status_code == 409
        both = api.get(f"/admin/dead-letters/{letter['id']}?dry_run=false").json()
        assert "PID|1||||Doe^Jane" in both["raw"] and "RP-2^^^HOSP^MR" in both["edited_raw"]
        audit = api.get("/fhir/AuditEvent?subtype=edit-replay").json()
        assert audit["total"] == 2  # the command line's and the API's

    # Reprocessing what is stored through the same mappings writes nothing new.
    job = _hl7gw(gateway, "reprocess", "--sender", "LAB|HOSP")
    assert job.returncode == 0, job.stderr.decode()
    job_id = job.stdout.decode().split()[1]
    deadline = time.monotonic() + 60
    while b"done" not in _hl7gw(gateway, "jobs", "show", job_id).stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"2 message(s) queued" in _hl7gw(gateway, "jobs", "show", job_id).stdout
    # Two first attempts (failed), two replays and two reprocesses (processed).
    assert sorted(wait_processed(gateway, 6, timeout=60)) == ["failed"] * 2 + ["processed"] * 4
    assert find_patient(gateway, "RP-1")["meta"]["versionId"] == "1"


def test_sigterm_stops_cleanly_and_loses_nothing(tmp_path: Path) -> None:
    import asyncio

    from hl7.mllp import open_hl7_connection

    data = tmp_path / "data"
    gateway = GatewayProcess(data).start()
    count = 40

    async def send_all() -> list[str]:
        reader, writer = await open_hl7_connection("127.0.0.1", gateway.mllp_port)
        for i in range(count):
            writer.writemessage(
                hl7.parse(
                    f"MSH|^~\\&|SND|FAC|GW|GWF|20240101120000||ADT^A04^ADT_A01|TERM-{i}|P|2.5.1\r"
                    f"PID|1||TERM{i}^^^HOSP^MR||Doe^Jane||19800101|F\r"
                )
            )
        await writer.drain()
        codes = [str((await reader.readmessage()).segment("MSA")[1]) for _ in range(count)]
        writer.close()
        return codes

    try:
        assert asyncio.run(send_all()) == ["AA"] * count
        children = gateway.descendants()
        assert len(children) >= 4  # redis-server, api, worker, mllp
        assert gateway.stop() == 0
        time.sleep(0.5)
        alive = [
            pid
            for pid in children
            if Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
        ]
        assert alive == [], "children outlived the gateway"
    finally:
        if gateway.process and gateway.process.poll() is None:
            gateway.kill_tree()

    restarted = GatewayProcess(data).start()
    try:
        for i in (0, count // 2, count - 1):
            assert find_patient(restarted, f"TERM{i}")["name"][0]["family"] == "Doe"
        assert wait_processed(restarted, count) == ["processed"] * count
    finally:
        restarted.stop()


def test_embedded_redis_crash_is_restarted_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data").start()
    try:
        before = send_raw(ADT_A01.read_bytes(), gateway.mllp_port)
        assert str(before.segment("MSA")[1]) in ("AA", "CA")
        (redis_pid,) = [
            pid for pid in gateway.descendants() if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        os.kill(redis_pid, 9)

        # Until Redis is back the answer is "not accepted" (AR/CR 207); then it is accepted again.
        raw = (
            b"MSH|^~\\&|SND|FAC|GW|GWF|20240101120000||ADT^A04^ADT_A01|AFTER-CRASH|P|2.5.1\r"
            b"PID|1||CRASH1^^^HOSP^MR||Doe^John||19800101|M\r"
        )
        deadline = time.monotonic() + 60
        codes = []
        while time.monotonic() < deadline:
            code = str(send_raw(raw, gateway.mllp_port).segment("MSA")[1])
            codes.append(code)
            if code == "AA":
                break
            assert code == "AR", codes
            time.sleep(0.5)
        assert codes[-1] == "AA", f"never accepted again: {codes}\n{gateway.log()}"
        assert find_patient(gateway, "CRASH1")["name"][0]["family"] == "Doe"
        # A message a worker held when Redis died comes back once the old consumer's heartbeat
        # times out (docs/delivery.md), which can be later than the 10 s the others are given.
        assert find_patient(gateway, "1032702", timeout=60)["name"][0]["family"] == "Everywoman"
    finally:
        gateway.stop()


def test_a_bulk_replay_survives_kill_9_and_applies_each_message_once(tmp_path: Path) -> None:
    """2,000 dead letters replayed as one job; the whole gateway killed with SIGKILL mid-job and
    started again: the job completes, every letter is replayed, every message stored once."""
    from sqlalchemy import func, select

    from gateway.db.engine import make_engine
    from gateway.db.migrate import migrate
    from gateway.db.schema import fhir_resource
    from gateway.journal.dead_letters import DeadLetterStore, Letter
    from gateway.journal.jobs import JobStore
    from tests.support.queue import parsed_envelope

    count = 2000
    data = tmp_path / "data"
    data.mkdir()
    engine = make_engine(f"sqlite:///{data / 'hl7gw.sqlite3'}")
    migrate(engine)
    letters = DeadLetterStore(engine)
    for n in range(count):
        raw = (
            f"MSH|^~\\&|BULK|HOSP|GW|GW|20240101120000||ADT^A04^ADT_A01|BULK-{n}|P|2.5.1\r"
            f"PID|1||BULK{n}^^^HOSP^MR||Doe^Jane||19800101|F\r"
        ).encode()
        letters.park(Letter(parsed_envelope(raw, seq=n + 1), "convert", "mapping fixed since", created_at=n + 1))
    gateway = GatewayProcess(data)
    gateway.env["HL7GW_REPLAY_RATE"] = "400"
    gateway.start()
    try:
        started = _hl7gw(gateway, "dlq", "replay", "--all", "--sender", "BULK|HOSP")
        assert started.returncode == 0, started.stderr.decode()
        job_id = started.stdout.decode().split()[1]
        jobs = JobStore(engine)
        deadline = time.monotonic() + 60
        while jobs.get(job_id).done < 300 and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.1)
        assert 0 < jobs.get(job_id).done < count  # type: ignore[union-attr]  # killed mid-job
    finally:
        gateway.kill_tree()

    restarted = GatewayProcess(data)
    restarted.env["HL7GW_REPLAY_RATE"] = "400"
    restarted.start()
    try:
        deadline = time.monotonic() + 240
        while jobs.get(job_id).status != "done" and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.5)
        job = jobs.get(job_id)
        assert job is not None and job.status == "done", restarted.log()
        assert job.done == count  # counted from the letters the job replayed, whatever the kill cut short
        assert {d.status for d in letters.list(status=None, limit=count + 10)} == {"replayed"}

        def patients() -> int:
            with engine.connect() as conn:
                query = select(func.count()).select_from(fhir_resource).where(fhir_resource.c.type == "Patient")
                return int(conn.execute(query).scalar_one())

        deadline = time.monotonic() + 240
        while patients() < count and time.monotonic() < deadline:
            time.sleep(0.5)
        assert patients() == count  # each message stored, none twice (deterministic ids)
        with engine.connect() as conn:
            versions = conn.execute(
                select(func.max(fhir_resource.c.version_id)).where(fhir_resource.c.type == "Patient")
            ).scalar_one()
        assert versions == 1  # applied once: no message wrote a second version
    finally:
        restarted.stop()
        engine.dispose()


def test_a_site_mapping_fixed_then_its_dead_letters_replayed_and_a_reprocess_corrects_what_was_stored(
    tmp_path: Path,
) -> None:
    """The operator's story with ``hl7gw run``: a site overlay requires PID-8, a message without it
    is dead-lettered; the overlay is fixed and the gateway restarted; ``hl7gw dlq replay`` makes the
    patient searchable; a reprocess after a further mapping change writes new versions whose
    Provenance names the job."""
    root = Path(__file__).resolve().parent.parent / "mappings"
    shipped = (root / "segments" / "PID_Patient.yaml").read_text()
    rule = '{from: PID-8, to: gender, datatype: "CWE[code]", table: AdministrativeSex}'
    site = tmp_path / "site"
    (site / "segments").mkdir(parents=True)
    (site / "segments" / "PID_Patient.yaml").write_text(shipped.replace(rule, rule[:-1] + ", required: true}"))
    data = tmp_path / "data"
    gateway = GatewayProcess(data)
    gateway.env["HL7GW_MAPPINGS_DIR"] = str(site)
    gateway.start()
    no_sex = b"MSH|^~\\&|SITE|HOSP|GW|GW|20240101120000||ADT^A04^ADT_A01|ST-1|P|2.5.1\rPID|1||ST1^^^HOSP^MR||Doe^Jo\r"
    try:
        assert str(send_raw(no_sex, gateway.mllp_port).segment("MSA")[1]) == "AA"
        assert wait_processed(gateway, 1) == ["failed"]
        shown = _hl7gw(gateway, "dlq", "list", "--json")
        (letter,) = json.loads(shown.stdout)["dead_letters"]
        assert "PID-8 Administrative Sex" in letter["reason"] and "map PID[Patient]" in letter["reason"]
    finally:
        gateway.stop()

    (site / "segments" / "PID_Patient.yaml").write_text(shipped)  # the fix
    restarted = GatewayProcess(data)
    restarted.env["HL7GW_MAPPINGS_DIR"] = str(site)
    restarted.start()
    try:
        assert _hl7gw(restarted, "dlq", "replay", letter["id"]).returncode == 0
        patient = find_patient(restarted, "ST1", timeout=30)
        assert patient["meta"]["versionId"] == "1" and "gender" not in patient
    finally:
        restarted.stop()

    # A further site change (every patient's identifiers under the site's own URI), then a reprocess.
    (site / "tables").mkdir()
    table = (root / "tables" / "IdentifierSystem.yaml").read_text()
    (site / "tables" / "IdentifierSystem.yaml").write_text(table + "  HOSP: https://hospital.example.org/sid/mrn\n")
    third = GatewayProcess(data)
    third.env["HL7GW_MAPPINGS_DIR"] = str(site)
    third.start()
    try:
        job = _hl7gw(third, "reprocess", "--sender", "SITE|HOSP")
        assert job.returncode == 0, job.stderr.decode()
        job_id = job.stdout.decode().split()[1]
        patient = third.wait_for(
            "/fhir/Patient?identifier=ST1",
            lambda b: b.get("total") == 1 and b["entry"][0]["resource"]["meta"]["versionId"] == "2",
            timeout=60,
        )["entry"][0]["resource"]
        assert patient["identifier"][0]["system"] == "https://hospital.example.org/sid/mrn"
        found = third.wait_for(f"/fhir/Provenance?target=Patient/{patient['id']}", lambda b: b.get("total"), 10)
        agents = [a for e in found["entry"] for a in e["resource"]["agent"]]
        assert {"system": "urn:hl7gw:job", "value": job_id} in [a["who"].get("identifier") for a in agents]
    finally:
        third.stop()
