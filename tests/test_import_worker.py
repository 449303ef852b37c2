"""The worker's import queue: imported messages run the live pipeline (stored, or a dead letter
whose replay works), on their own pace, and a sender's order holds across live and imported
messages. Real SQLite/PostgreSQL, Redis and a running worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from sqlalchemy.engine import Engine

from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore
from gateway.journal.messages import MessageArchive
from gateway.keys import IMPORT_QUEUE, QUEUE, Keys
from gateway.queue.intake import Intake
from gateway.services.replay import Replayer, queue_at
from gateway.store.resources import ResourceStore
from tests.support.messages import adt
from tests.support.queue import RunningWorker, archive_statuses, parsed_envelope, wait_until, worker_settings


def commit(redis_url: str, namespace: str, queue: str, envelopes: list[Envelope]) -> list[int]:
    """Commit ``envelopes`` through an intake of ``queue``, as the listener or an importer does;
    their sequence numbers."""

    async def run() -> list[int]:
        intake = Intake(redis_url, namespace=namespace, queue=queue)
        await intake.start()
        try:
            return [receipt.seq for receipt in await asyncio.gather(*(intake.submit(e) for e in envelopes))]
        finally:
            await intake.close()

    return asyncio.run(run())


def test_imported_messages_are_stored_and_bad_ones_dead_lettered_and_replayable(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    good = [parsed_envelope(adt(f"IMP-{n}", "Imported", mrn=f"IM{n}")) for n in range(3)]
    no_identifier = parsed_envelope(adt("IMP-BAD", "Broken", mrn="IMX").replace(b"|IMX^^^HOSP^MR|", b"||"))
    imported = [*good, no_identifier]
    assert commit(redis_url, redis_namespace, IMPORT_QUEUE, imported) == [1, 2, 3, 4]
    settings = worker_settings(tmp_path, database_url, redis_namespace, import_rate=50.0)
    with RunningWorker(settings, redis_url):
        wait_until(lambda: archive_statuses(engine, imported) == ["processed"] * 3 + ["failed"], what="imported")
        store = ResourceStore(engine)
        assert all(store.search("Patient", {"identifier": [f"IM{n}"]}) for n in range(3))
        client, keys = redis.Redis.from_url(redis_url), Keys(redis_namespace)
        assert client.llen(keys.queue(IMPORT_QUEUE)) == 0 and client.hlen(keys.queue_messages(IMPORT_QUEUE)) == 0

        (letter,) = DeadLetterStore(engine).list()
        assert (letter.control_id, letter.stage, letter.envelope_id) == ("IMP-BAD", "convert", no_identifier.id)
        fixed = adt("IMP-BAD", "Broken", mrn="IMX")
        with queue_at(redis_url, redis_namespace) as enqueue:
            replayed = Replayer(DeadLetterStore(engine), enqueue).replay(letter.id, "cli:ana", fixed)
        wait_until(
            lambda: getattr(MessageArchive(engine).get(replayed.envelope.id), "status", "") == "processed",
            what="the replayed letter processed",
        )
    assert store.search("Patient", {"identifier": ["IMX"]})
    assert replayed.envelope.seq == 4  # the import's place in the sender's order


def test_a_senders_order_holds_when_its_live_message_is_stored_before_an_older_imported_one(
    tmp_path: Path, engine: Engine, database_url: str, redis_url: str, redis_namespace: str
) -> None:
    # Same sender, same MSH-7: only the sequence number tells which came first. The imported
    # message was committed first; the live one after it (the newer data) is stored first.
    older = parsed_envelope(adt("FILE-1", "Older"))
    newer = parsed_envelope(adt("LIVE-2", "Newer"))
    assert commit(redis_url, redis_namespace, IMPORT_QUEUE, [older]) == [1]
    assert commit(redis_url, redis_namespace, QUEUE, [newer]) == [2]
    # Hold the import queue's pace 3 s ahead: the live message goes first.
    client, keys = redis.Redis.from_url(redis_url), Keys(redis_namespace)
    seconds, micros = client.time()
    client.set(keys.import_pace(), seconds * 1_000_000 + micros + 3_000_000, px=60_000)
    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace), redis_url):
        wait_until(lambda: archive_statuses(engine, [newer]) == ["processed"], what="the live message")
        assert archive_statuses(engine, [older]) == ["missing"]
        wait_until(lambda: archive_statuses(engine, [older]) == ["processed"], what="the imported message")
    (patient,) = ResourceStore(engine).search("Patient", {"identifier": ["M1"]})
    assert patient["name"][0]["family"] == "Newer"
    assert patient["meta"]["versionId"] == "1"  # the older write was skipped, not applied over it
