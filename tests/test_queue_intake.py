"""Intake group commit against a real Redis: what it writes is what dramatiq reads."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis
from dramatiq import Message

from gateway.envelope import Envelope
from gateway.errors import IntakeUnavailable
from gateway.queue.embedded import free_port
from gateway.queue.intake import Intake
from gateway.queue.keys import ACTOR, QUEUE, Keys


def _envelope(sender: str = "App|Fac", control_id: str = "1", raw: bytes = b"MSH|^~\\&|App|Fac\r") -> Envelope:
    return Envelope(id=str(uuid.uuid4()), raw=raw, received_at=int(time.time() * 1000), sender=sender, control_id=control_id)


async def _submit_all(redis_url: str, namespace: str, envelopes: list[Envelope], batch_max: int = 256) -> list[int]:
    intake = Intake(redis_url, namespace=namespace, batch_max=batch_max)
    await intake.start()
    try:
        return list(await asyncio.gather(*(intake.submit(e) for e in envelopes)))
    finally:
        await intake.close()


def test_committed_messages_are_dramatiq_messages(redis_url: str, redis_namespace: str) -> None:
    raw = "MSH|^~\\&|App|Fac|||20240101||ADT^A01|1|P|2.5\rPID|1||x^^^A\xe9\r".encode("latin-1")
    envelope = _envelope(raw=raw, control_id="42")
    asyncio.run(_submit_all(redis_url, redis_namespace, [envelope]))

    keys = Keys(redis_namespace)
    client = redis.Redis.from_url(redis_url)
    ids = client.lrange(keys.queue(), 0, -1)
    assert len(ids) == 1
    message = Message.decode(client.hget(keys.queue_messages(), ids[0]))
    assert message.queue_name == QUEUE and message.actor_name == ACTOR
    assert message.message_id == envelope.id
    assert message.options["redis_message_id"] == ids[0].decode()
    decoded = Envelope.from_json(message.args[0])
    assert decoded.raw == raw  # bytes survive exactly, whatever their charset
    assert decoded.control_id == "42" and decoded.seq == 1


def test_sequence_numbers_are_per_sender_and_gapless(redis_url: str, redis_namespace: str) -> None:
    envelopes = [_envelope(sender=f"S{i % 3}|F", control_id=str(i)) for i in range(90)]
    seqs = asyncio.run(_submit_all(redis_url, redis_namespace, envelopes, batch_max=7))
    by_sender: dict[str, list[int]] = {}
    for envelope, seq in zip(envelopes, seqs):
        by_sender.setdefault(envelope.sender, []).append(seq)
    for sender_seqs in by_sender.values():
        assert sorted(sender_seqs) == list(range(1, 31))
    # Submission order within a sender is commit order.
    for sender_seqs in by_sender.values():
        assert sender_seqs == sorted(sender_seqs)
    client = redis.Redis.from_url(redis_url)
    assert client.llen(Keys(redis_namespace).queue()) == 90


def test_unreachable_redis_refuses_instead_of_accepting() -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> None:
        intake = Intake(dead_url, timeout=1.0)
        await intake.start()
        try:
            with pytest.raises(IntakeUnavailable):
                await intake.submit(_envelope())
        finally:
            await intake.close()

    asyncio.run(scenario())
