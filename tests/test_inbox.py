"""The watched inbox (gateway/services/inbox.py) on real files and a real Redis: imported files
move to done/ with a report, files that are not HL7 to failed/, nothing is imported twice, and
the watch loop leaves a file alone while it is being written."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
from dramatiq import Message
from sqlalchemy.engine import Engine

from gateway.config import load_settings
from gateway.envelope import Envelope
from gateway.journal.jobs import JobStore
from gateway.keys import Keys
from gateway.services.importer import Importer
from gateway.services.inbox import Inbox
from tests.support.import_files import write_a04_batch
from tests.support.messages import a04

QUEUES = ("hl7", "hl7-import")


def committed(redis_url: str, namespace: str) -> list[str]:
    """MSH-10 of every message committed, on the live or the import queue, oldest first."""
    keys, client = Keys(namespace), redis.Redis.from_url(redis_url)
    found = []
    try:
        for queue in QUEUES:
            for entry in client.lrange(keys.queue(queue), 0, -1):
                envelope = Envelope.from_json(Message.decode(client.hget(keys.queue_messages(queue), entry)).args[0])
                if envelope.kind == "message":
                    found.append(envelope.control_id)
    finally:
        client.close()
    return found


def queued_count(redis_url: str, namespace: str) -> int:
    keys, client = Keys(namespace), redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(keys.queue(queue))) for queue in QUEUES)
    finally:
        client.close()


def batch_file(path: Path, *messages: bytes) -> Path:
    bhs = b"BHS|^~\\&|REG|HOSP|GW|GW|20240501120000||||IN-1\r"
    path.write_bytes(bhs + b"".join(messages) + f"BTS|{len(messages)}\r".encode())
    return path


def bad(number: int) -> bytes:
    return a04(number).replace(b"|P|2.5.1\r", b"|P|9.9\r", 1)


@asynccontextmanager
async def inbox(
    tmp_path: Path, engine: Engine, redis_url: str, namespace: str, **options: float
) -> AsyncIterator[Inbox]:
    settings = load_settings(
        data_dir=tmp_path / "data", redis_url=redis_url, redis_namespace=namespace,
        inbox_dir=tmp_path / "inbox", **options,
    )  # fmt: skip
    async with Importer(settings, redis_url, jobs=JobStore(engine), who="inbox") as importer:
        yield Inbox(settings.inbox, importer)


def report(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.with_name(path.name + ".report.json").read_text())  # type: ignore[no-any-return]


def test_a_file_is_imported_and_moved_to_done_with_its_report(
    tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> str:
        async with inbox(tmp_path, engine, redis_url, redis_namespace) as box:
            path = batch_file(box.directory / "adt.hl7", a04(1), bad(2), a04(3))
            return await box.take(path)

    assert asyncio.run(scenario()) == "done"
    done = tmp_path / "inbox" / "done" / "adt.hl7"
    assert done.exists() and not (tmp_path / "inbox" / "adt.hl7").exists()
    found = report(done)
    assert (found["status"], found["moved_to"]) == ("imported", "done/adt.hl7")
    totals = found["import"]["totals"]
    assert (totals["accepted"], totals["rejected"], totals["read"]) == (2, 1, 3)
    (problem,) = found["import"]["this_run"]["problems"]
    assert (problem["control_id"], problem["ack_code"], problem["errors"]) == ("SINK-2", "AR", ["203"])
    assert problem["offset"] == done.read_bytes().index(b"MSH|^~\\&|REG|HOSP|GW|GW|20240501000002")
    text = json.dumps(found)
    assert "Patient2" not in text and "19800101" not in text  # no PHI in a report
    lines = "\n".join(record.getMessage() for record in caplog.records)
    assert "inbox: adt.hl7 imported -> done/adt.hl7" in lines
    assert "Patient" not in lines and "19800101" not in lines  # nor in a log line, DEBUG included
    assert sorted(committed(redis_url, redis_namespace)) == ["SINK-1", "SINK-3"]


def test_a_file_that_is_not_hl7_goes_to_failed_with_a_report(
    tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str
) -> None:
    async def scenario() -> list[str]:
        async with inbox(tmp_path, engine, redis_url, redis_namespace) as box:
            (box.directory / "scan.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
            (box.directory / "broken.hl7.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
            (box.directory / "empty.hl7").write_bytes(b"")
            return [await box.take(box.directory / name) for name in ("scan.pdf", "broken.hl7.gz", "empty.hl7")]

    assert asyncio.run(scenario()) == ["failed", "failed", "failed"]
    assert report(tmp_path / "inbox" / "failed" / "empty.hl7")["reason"] == "empty file"
    for name in ("scan.pdf", "broken.hl7.gz"):
        found = report(tmp_path / "inbox" / "failed" / name)
        assert found["status"] == "failed" and "not HL7" in found["reason"]
    assert committed(redis_url, redis_namespace) == []


def test_a_file_is_never_imported_twice_and_done_names_stay_unique(
    tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str
) -> None:
    async def scenario() -> None:
        async with inbox(tmp_path, engine, redis_url, redis_namespace) as box:
            for name in ("day.hl7", "day.hl7", "copy-of-day.hl7"):  # the same bytes three times
                assert await box.take(batch_file(box.directory / name, a04(5), a04(6))) == "done"

    asyncio.run(scenario())
    done = tmp_path / "inbox" / "done"
    assert sorted(p.name for p in done.iterdir() if not p.name.endswith(".json")) == [
        "copy-of-day.hl7",
        "day-1.hl7",
        "day.hl7",
    ]
    assert report(done / "day.hl7")["status"] == "imported"
    assert report(done / "day-1.hl7")["status"] == "already-imported"
    assert report(done / "copy-of-day.hl7")["status"] == "already-imported"
    assert sorted(committed(redis_url, redis_namespace)) == ["SINK-5", "SINK-6"]


def test_the_watch_loop_waits_for_a_file_being_written(
    tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str
) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with inbox(tmp_path, engine, redis_url, redis_namespace, inbox_settle_s=1.5, inbox_poll_s=0.1) as box:
            stop = asyncio.Event()
            watching = asyncio.create_task(box.watch(stop))
            growing = box.directory / "growing.hl7"
            with growing.open("wb") as handle:  # written slowly, the way a transfer writes
                for number in range(10):
                    handle.write(a04(number))
                    handle.flush()
                    await asyncio.sleep(0.2)
                    assert growing.exists(), "taken while still being written"
            started = time.monotonic()
            while growing.exists() and time.monotonic() - started < 20:
                await asyncio.sleep(0.1)
            taken_after_settle = time.monotonic() - started >= 1.0
            stop.set()
            await asyncio.wait_for(watching, 10)
            return taken_after_settle, (box.directory / "done" / "growing.hl7").exists()

    assert asyncio.run(scenario()) == (True, True)
    assert sorted(committed(redis_url, redis_namespace)) == sorted(f"SINK-{n}" for n in range(10))


def test_a_stop_in_the_middle_of_an_import_leaves_the_file_to_resume_at_the_next_start(
    tmp_path: Path, engine: Engine, redis_url: str, redis_namespace: str
) -> None:
    count = 60_000

    async def watch_until(stop_after: float | None) -> float:
        async with inbox(tmp_path, engine, redis_url, redis_namespace, inbox_settle_s=0, inbox_poll_s=0.05) as box:
            big = box.directory / "big.hl7"
            if not big.exists() and not (box.directory / "done" / "big.hl7").exists():
                write_a04_batch(tmp_path / "big.hl7", count)
                os.rename(tmp_path / "big.hl7", big)
            stop = asyncio.Event()
            watching = asyncio.create_task(box.watch(stop))
            if stop_after is None:
                while not (box.directory / "done" / "big.hl7.report.json").exists():
                    await asyncio.sleep(0.05)
            else:
                while queued_count(redis_url, redis_namespace) == 0:  # the import has begun committing
                    await asyncio.sleep(0.01)
                await asyncio.sleep(stop_after)
            asked = time.monotonic()
            stop.set()
            await asyncio.wait_for(watching, 10)
            return time.monotonic() - asked

    assert asyncio.run(watch_until(0.1)) < 5  # the import is cancelled, not waited for
    assert (tmp_path / "inbox" / "big.hl7").exists() and not (tmp_path / "inbox" / "done" / "big.hl7").exists()
    asyncio.run(watch_until(None))
    imported = report(tmp_path / "inbox" / "done" / "big.hl7")["import"]
    assert imported["resumed_at"] > 0 and imported["status"] == "done"
    queued = committed(redis_url, redis_namespace)
    assert len(queued) == len(set(queued)) == count  # each message queued once
