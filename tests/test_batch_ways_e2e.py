"""End to end with ``hl7gw run``: the watched inbox (done/, failed/, reports, restarts, a kill in
the middle of an import), POST /hl7/batch and a batch over MLLP, each answered by its batch ACK."""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from gateway.db.engine import make_engine
from gateway.db.schema import message_archive, operator_job
from gateway.hl7.batch import BatchStart, ReadMessage, read_batch
from gateway.hl7.message import parse
from gateway.keys import Keys
from gateway.mllp.framing import FrameDecoder, encode_frame
from gateway.services.embedded_redis import EmbeddedRedis
from tests.support.gateway_process import GatewayProcess
from tests.support.import_files import PATIENT_SAMPLES, a04, batch, sample_copy, write_a04_batch

pytestmark = pytest.mark.slow


def _gateway(tmp_path: Path, settle: str = "1") -> GatewayProcess:
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env.update({"HL7GW_INBOX_DIR": str(tmp_path / "inbox"), "HL7GW_INBOX_SETTLE_S": settle})
    return gateway


def _wait_for_file(path: Path, gateway: GatewayProcess, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no {path} after {timeout}s\n{gateway.log()}")


def _drop(inbox: Path, name: str, data: bytes) -> None:
    """Written under a temporary name, then renamed in, as a careful sender does."""
    (inbox / f".{name}.part").write_bytes(data)
    os.rename(inbox / f".{name}.part", inbox / name)


def _count(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(message_archive)).scalar_one())


def _mllp_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(encode_frame(payload))
        decoder = FrameDecoder()
        while True:
            frames = decoder.feed(sock.recv(65536))
            if frames:
                return frames[0]


def test_inbox_upload_and_mllp_batches_beside_a_running_gateway(tmp_path: Path) -> None:
    copies = [sample_copy(PATIENT_SAMPLES[n % len(PATIENT_SAMPLES)], f"inbox-{n}") for n in range(12)]
    gateway = _gateway(tmp_path).start()
    inbox = tmp_path / "inbox"
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'hl7gw.sqlite3'}")
    try:
        data = batch([raw for raw, _ in copies], declared=13)  # BTS-1 off by one
        _drop(inbox, "samples.hl7", data)
        (inbox / "notes.txt").write_text("not a batch file\n")  # written in place: taken after the settle time
        found = _wait_for_file(inbox / "done" / "samples.hl7.report.json", gateway)
        assert found["status"] == "imported" and found["import"]["totals"]["accepted"] == 12
        assert found["import"]["this_run"]["batches"][0]["mismatch"] is True
        failed = _wait_for_file(inbox / "failed" / "notes.txt.report.json", gateway)
        assert failed["status"] == "failed" and "not HL7" in failed["reason"]
        for _, identifier in copies:
            gateway.wait_for(f"/fhir/Patient?identifier={identifier}", lambda b: b.get("total", 0) == 1, 90)

        # POST /hl7/batch: one bad message (a version not taken), answered AR with ERR, BHS-12 = BHS-11.
        upload = batch([a04(1, "UP"), a04(2, "UP").replace(b"|P|2.5.1\r", b"|P|9.9\r"), a04(3, "UP")], file=False,
                       control_id="UP-BATCH")  # fmt: skip
        with gateway.client() as client:
            answer = client.post("/hl7/batch", content=upload, headers={"Content-Type": "application/hl7-v2"})
            reader = httpx.post(f"{gateway.base_url}/hl7/batch", content=upload)
        assert reader.status_code == 401
        assert answer.status_code == 200, answer.text
        items = list(read_batch(io.BytesIO(answer.content)))
        assert [i.header.reference for i in items if isinstance(i, BatchStart) and i.header] == ["UP-BATCH"]
        (ack,) = [parse(i.raw.decode()) for i in items if isinstance(i, ReadMessage)]
        assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AR", "UP-2") and ack.segment("ERR") is not None

        # The same over MLLP: one frame, one batch ACK.
        frame = batch([a04(1, "ML"), b"MSH|^~\\&|LAB|HOSP|GW|GW|2024||ADT^A04^ADT_A01|ML-BAD|P|9.9\r"], file=False,
                      control_id="ML-BATCH")  # fmt: skip
        answered = _mllp_exchange(gateway.mllp_port, frame)
        items = list(read_batch(io.BytesIO(answered)))
        assert [i.header.reference for i in items if isinstance(i, BatchStart) and i.header] == ["ML-BATCH"]
        (ack,) = [parse(i.raw.decode()) for i in items if isinstance(i, ReadMessage)]
        assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AR", "ML-BAD")
        for identifier in ("UP1", "UP3", "ML1"):
            gateway.wait_for(f"/fhir/Patient?identifier={identifier}", lambda b: b.get("total", 0) == 1, 60)

        # A restart, and the same file dropped again under another name: nothing imported twice.
        gateway.stop()
        _drop(inbox, "samples-again.hl7", data)
        gateway.start()
        again = _wait_for_file(inbox / "done" / "samples-again.hl7.report.json", gateway)
        assert again["status"] == "already-imported"
        time.sleep(3)  # anything queued by mistake would be stored by now
        assert _count(engine) == 12 + 2 + 1 + 2  # inbox, upload (2 accepted + 1 kept as rejected), MLLP: each once
    finally:
        gateway.stop()
        engine.dispose()


def test_an_inbox_import_killed_half_way_resumes_and_queues_each_message_once(tmp_path: Path) -> None:
    count = 50_000
    source = write_a04_batch(tmp_path / "big.hl7", count, prefix="BIG")
    gateway = _gateway(tmp_path, settle="0").start()
    inbox = tmp_path / "inbox"
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'hl7gw.sqlite3'}")
    try:
        os.rename(source, inbox / "big.hl7")
        deadline = time.monotonic() + 60
        with engine.connect() as conn:
            while not conn.execute(select(operator_job.c.id).where(operator_job.c.kind == "import")).first():
                assert time.monotonic() < deadline, gateway.log()
                time.sleep(0.05)
                conn.rollback()
        time.sleep(1.0)  # part of the file committed
        gateway.kill_tree()
        assert (inbox / "big.hl7").exists(), "finished before the kill: make the file larger"
        gateway.start()
        found = _wait_for_file(inbox / "done" / "big.hl7.report.json", gateway, timeout=300)
        imported = found["import"]
        assert imported["resumed_at"] > 0 and imported["status"] == "done"
        # Each message queued once: the sender's sequence counter moves only for a new message.
        redis_url = EmbeddedRedis.running_url(tmp_path / "data" / "redis")
        assert redis_url is not None
        client = redis.Redis.from_url(redis_url)
        try:
            assert int(client.get(Keys().sequence("LAB|HOSP"))) == count  # type: ignore[arg-type]
        finally:
            client.close()
    finally:
        gateway.stop()
        engine.dispose()
