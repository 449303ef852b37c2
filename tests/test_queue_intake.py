"""Intake group commit against a real Redis: what it writes is what dramatiq reads."""

from __future__ import annotations

import asyncio

import pytest
import redis
from dramatiq import Message

from gateway.envelope import Envelope
from gateway.errors import IntakeUnavailable
from gateway.keys import ACTOR, QUEUE, Keys
from gateway.queue.intake import Intake, Receipt
from gateway.services.embedded_redis import free_port
from tests.support.queue import queued, queued_envelope, submit_all


def test_committed_messages_are_dramatiq_messages(redis_url: str, redis_namespace: str) -> None:
    raw = "MSH|^~\\&|App|Fac|||20240101||ADT^A01|1|P|2.5\rPID|1||x^^^A\xe9\r".encode("latin-1")
    sent = queued_envelope(raw=raw, control_id="42")
    (receipt,) = asyncio.run(submit_all(redis_url, redis_namespace, [sent]))
    assert receipt == Receipt(1)

    keys = Keys(redis_namespace)
    client = redis.Redis.from_url(redis_url)
    ids = client.lrange(keys.queue(), 0, -1)
    assert len(ids) == 1
    message = Message.decode(client.hget(keys.queue_messages(), ids[0]))
    assert message.queue_name == QUEUE and message.actor_name == ACTOR
    assert message.message_id == sent.id
    assert message.options["redis_message_id"] == ids[0].decode()
    decoded = Envelope.from_json(message.args[0])
    assert decoded.raw == raw  # bytes survive exactly, whatever their charset
    assert decoded.control_id == "42" and decoded.seq == 1 and decoded.kind == "message"


def test_sequence_numbers_are_per_sender_gapless_and_in_submission_order(redis_url: str, redis_namespace: str) -> None:
    # Small batches: many commits are in flight at once on the pipelined connection.
    envelopes = [queued_envelope(sender=f"S{i % 3}|F", control_id=str(i)) for i in range(300)]
    receipts = asyncio.run(submit_all(redis_url, redis_namespace, envelopes, batch_max=7))
    by_sender: dict[str, list[int]] = {}
    for sent, receipt in zip(envelopes, receipts):
        by_sender.setdefault(sent.sender, []).append(receipt.seq)
    for seqs in by_sender.values():
        assert seqs == list(range(1, 101))  # gapless, and submission order is commit order
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == [str(i) for i in range(300)]


def test_kept_envelopes_have_no_sequence_number_and_are_never_deduplicated(
    redis_url: str, redis_namespace: str
) -> None:
    envelopes = [
        queued_envelope(control_id="R1", kind="rejected"),
        queued_envelope(control_id="R1", kind="rejected"),
        queued_envelope(control_id="K1", kind="ack"),
        queued_envelope(control_id="P1"),
    ]
    receipts = asyncio.run(submit_all(redis_url, redis_namespace, envelopes))
    assert receipts == [Receipt(0), Receipt(0), Receipt(0), Receipt(1)]
    stored = queued(redis_url, redis_namespace)
    assert [(e.kind, e.seq) for e in stored] == [("rejected", 0), ("rejected", 0), ("ack", 0), ("message", 1)]
    assert stored[0].meta == {"reason": "AR: 203 MSH-12 version"}


def test_unreachable_redis_refuses_instead_of_accepting() -> None:
    dead_url = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario() -> None:
        intake = Intake(dead_url, timeout=1.0)
        await intake.start()
        try:
            with pytest.raises(IntakeUnavailable):
                await intake.submit(queued_envelope())
            assert not await intake.ping()
        finally:
            await intake.close()

    asyncio.run(scenario())


def test_not_started_intake_refuses(redis_url: str) -> None:
    async def scenario() -> None:
        with pytest.raises(IntakeUnavailable):
            await Intake(redis_url).submit(queued_envelope())

    asyncio.run(scenario())


def test_ping(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> bool:
        intake = Intake(redis_url, namespace=redis_namespace)
        try:
            return await intake.ping()
        finally:
            await intake.close()

    assert asyncio.run(scenario())
