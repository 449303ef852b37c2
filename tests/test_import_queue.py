"""The import queue's intake and pace against a real Redis: imported messages share the live
messages' duplicate window and sequence counters, land on their own queue, and are started at the
gateway's shared rate, never while live messages wait for a worker."""

from __future__ import annotations

import asyncio

import pytest
import redis
from dramatiq import Message

from gateway.envelope import Envelope
from gateway.keys import IMPORT_ACTOR, IMPORT_QUEUE, QUEUE, Keys
from gateway.queue.intake import Intake, Receipt
from gateway.queue.pacing import ImportPace
from tests.support.queue import queued_envelope


async def _submit(redis_url: str, namespace: str, queue: str, envelopes: list[Envelope]) -> list[Receipt]:
    intake = Intake(redis_url, namespace=namespace, queue=queue, batch_max=3)
    await intake.start()
    try:
        return list(await asyncio.gather(*(intake.submit(e) for e in envelopes)))
    finally:
        await intake.close()


def _queued(client: redis.Redis, keys: Keys, queue: str) -> list[Message]:  # type: ignore[type-arg]
    ids = client.lrange(keys.queue(queue), 0, -1)
    return [Message.decode(client.hget(keys.queue_messages(queue), i)) for i in ids]


def test_imported_messages_go_to_the_import_queue_for_the_import_actor(redis_url: str, redis_namespace: str) -> None:
    sent = [queued_envelope(sender="LAB|HOSP", control_id=str(n)) for n in range(5)]
    receipts = asyncio.run(_submit(redis_url, redis_namespace, IMPORT_QUEUE, sent))
    assert receipts == [Receipt(n) for n in range(1, 6)]

    keys, client = Keys(redis_namespace), redis.Redis.from_url(redis_url)
    assert client.llen(keys.queue(QUEUE)) == 0
    messages = _queued(client, keys, IMPORT_QUEUE)
    assert [(m.queue_name, m.actor_name) for m in messages] == [(IMPORT_QUEUE, IMPORT_ACTOR)] * 5
    assert [m.options["redis_message_id"] for m in messages] == [m.message_id for m in messages]
    envelopes = [Envelope.from_json(m.args[0]) for m in messages]
    assert [(e.id, e.control_id, e.seq) for e in envelopes] == [(s.id, s.control_id, n + 1) for n, s in enumerate(sent)]
    # A sender's live feed going silent must still show: imports keep their own last times.
    assert not client.hexists(keys.sender_last_seen(), "LAB|HOSP")
    assert client.hexists(keys.sender_last_imported(), "LAB|HOSP")


def test_live_and_imported_messages_share_sequence_numbers_and_duplicate_window(
    redis_url: str, redis_namespace: str
) -> None:
    live = [queued_envelope(sender="ADT|HOSP", control_id=f"L{n}", raw=b"L%d" % n) for n in range(3)]
    imported = [queued_envelope(sender="ADT|HOSP", control_id=f"I{n}", raw=b"I%d" % n) for n in range(3)]
    again = queued_envelope(sender="ADT|HOSP", control_id="L1", raw=b"L1")  # came live, now in a file too
    assert [r.seq for r in asyncio.run(_submit(redis_url, redis_namespace, QUEUE, live[:2]))] == [1, 2]
    assert [r.seq for r in asyncio.run(_submit(redis_url, redis_namespace, IMPORT_QUEUE, imported))] == [3, 4, 5]
    assert asyncio.run(_submit(redis_url, redis_namespace, QUEUE, live[2:])) == [Receipt(6)]
    assert asyncio.run(_submit(redis_url, redis_namespace, IMPORT_QUEUE, [again])) == [Receipt(2, duplicate=True)]

    keys, client = Keys(redis_namespace), redis.Redis.from_url(redis_url)
    assert [m.args[0]["control_id"] for m in _queued(client, keys, IMPORT_QUEUE)] == ["I0", "I1", "I2"]
    assert [m.args[0]["control_id"] for m in _queued(client, keys, QUEUE)] == ["L0", "L1", "L2"]
    assert int(client.get(keys.duplicates()) or 0) == 1


def test_an_intake_for_an_unknown_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="not a pipeline queue"):
        Intake("redis://127.0.0.1:1/0", queue="hl7-elsewhere")


def _pace(redis_url: str, namespace: str, rate: float, slept: list[float], **kw: float) -> ImportPace:
    return ImportPace(redis.Redis.from_url(redis_url), Keys(namespace), rate, sleep=slept.append, **kw)


def test_the_pace_gives_slots_one_interval_apart_shared_by_every_process(redis_url: str, redis_namespace: str) -> None:
    slept: list[float] = []
    # Two worker processes' paces on one gateway: one schedule.
    first, second = _pace(redis_url, redis_namespace, 20, slept), _pace(redis_url, redis_namespace, 20, slept)
    delays = [pace.reserve() for pace in (first, second, first, second, first)]
    # Reserved back to back (well within a millisecond each): 0, 50, 100, 150, 200 ms ahead.
    for n, delay in enumerate(delays):
        assert n * 0.05 - 0.02 <= delay <= n * 0.05 + 0.001
    first.wait()
    assert len(slept) == 1 and 0.23 <= slept[0] <= 0.25  # the sixth slot


def test_the_pace_reserves_at_most_its_horizon_ahead(redis_url: str, redis_namespace: str) -> None:
    slept: list[float] = []
    pace = _pace(redis_url, redis_namespace, 2, slept, ahead_s=1.0)
    assert 0 <= pace.reserve() < 0.001
    assert 0.49 <= pace.reserve() <= 0.5
    assert 0.99 <= pace.reserve() <= 1.0
    refused = pace.reserve()  # the next slot is 1.5 s ahead: come back in about half a second
    assert -0.5 <= refused < -0.49


def test_the_pace_starts_nothing_while_live_messages_wait_for_a_worker(redis_url: str, redis_namespace: str) -> None:
    keys, client = Keys(redis_namespace), redis.Redis.from_url(redis_url)
    client.rpush(keys.queue(QUEUE), "waiting-live-message")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # a worker fetched the live message meanwhile
            client.lpop(keys.queue(QUEUE))

    pace = ImportPace(client, keys, 1000, yield_s=0.05, sleep=sleep)
    assert pace.reserve() == -0.05
    assert client.get(keys.import_pace()) is None  # no slot was taken meanwhile
    pace.wait()
    assert slept == [0.05, 0.05, 0.05]  # then the slot, due at once: no more sleep
    assert client.get(keys.import_pace()) is not None


def test_a_rate_of_zero_is_refused(redis_url: str, redis_namespace: str) -> None:
    with pytest.raises(ValueError, match="above 0"):
        _pace(redis_url, redis_namespace, 0, [])


def test_the_pace_waits_while_a_live_message_of_its_process_waits_for_a_thread(
    redis_url: str, redis_namespace: str
) -> None:
    keys, client = Keys(redis_namespace), redis.Redis.from_url(redis_url)
    busy = [True, True, False]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        assert client.get(keys.import_pace()) is None  # nothing asked of Redis while live waits
        slept.append(seconds)

    pace = ImportPace(client, keys, 1000, yield_s=0.02, live_waiting=lambda: busy.pop(0), sleep=sleep)
    pace.wait()
    assert slept == [0.02, 0.02] and not busy
    assert client.get(keys.import_pace()) is not None


def test_a_draining_worker_runs_what_it_holds_without_waiting(redis_url: str, redis_namespace: str) -> None:
    slept: list[float] = []
    pace = _pace(redis_url, redis_namespace, 1, slept)
    pace.live_waiting = lambda: True  # live traffic would keep it waiting for ever
    pace.stopping.set()
    pace.wait()
    assert slept == []
