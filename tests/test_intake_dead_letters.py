"""Everything the listener rejected is kept, raw, where operators look: dead letters at stage
"intake" (``hl7gw dlq list``); incoming ACKs in the message archive with status "ack"."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.messages import MessageArchive
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import RunningWorker, queued, wait_until, worker_settings

INCOMING_ACK = b"MSH|^~\\&|SND|FAC|GW|GWF|20240101||ACK^A01^ACK|K-1|P|2.5.1\rMSA|AA|OUT-1\r"
UNREADABLE = b"this is not hl7"
OLD_VERSION = adt("V-1", version="2.0")
BAD_BYTES = adt("CS-1", extra="||||||UNICODE UTF-8").replace(b"Doe", b"D\xf6e")


def test_rejected_and_incoming_acks_are_kept_for_operators(
    tmp_path: Path,
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def send_all() -> list[str | None]:
        async with listening(redis_url, redis_namespace) as (_, port):
            client = await RawClient.connect(port)
            codes: list[str | None] = []
            for raw in (UNREADABLE, OLD_VERSION, BAD_BYTES, INCOMING_ACK, adt("GOOD-1")):
                await client.send_message(raw)
                codes.append(None if raw is INCOMING_ACK else (await client.read_ack()).get("MSA-1"))
            await client.close()
            return codes

    assert asyncio.run(send_all()) == ["AR", "AR", "AE", None, "AA"]
    envelopes = queued(redis_url, redis_namespace)
    assert [e.kind for e in envelopes] == ["rejected", "rejected", "rejected", "ack", "message"]
    archive = MessageArchive(engine)

    def statuses() -> list[str]:
        return [getattr(archive.get(e.id), "status", "missing") for e in envelopes]

    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace), redis_url):
        wait_until(lambda: statuses() == ["failed", "failed", "failed", "ack", "processed"])

    letters = {d.raw: d for d in DeadLetterStore(engine).list()}
    assert set(letters) == {UNREADABLE, OLD_VERSION, BAD_BYTES}  # raw, byte for byte
    assert all(d.stage == "intake" and d.attempts == 1 for d in letters.values())
    assert letters[OLD_VERSION].reason.startswith("AR: 203 MSH-12 version '2.0' is not accepted")
    assert letters[BAD_BYTES].reason.startswith("AE: 102 MSH-18")
    assert letters[OLD_VERSION].control_id == "V-1" and letters[OLD_VERSION].sender == "SND|FAC"
    assert archive.get(envelopes[3].id).raw == INCOMING_ACK  # type: ignore[union-attr]

    monkeypatch.setenv("HL7GW_DATABASE_URL", database_url)
    assert cli.main(["dlq", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" intake ") == 3 and "V-1" in listing and "CS-1" in listing
