"""The commit script's arguments for one message: six RESP bulk strings, and a dramatiq message
that decodes to the envelope sent, whatever its bytes and strings hold."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace

from dramatiq import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.envelope import Envelope, Kind
from gateway.errors import IntakeUnavailable
from gateway.keys import ACTOR, QUEUE, Keys
from gateway.queue.entry import ARGS_PER_MESSAGE, EntryEncoder, Received, content_digest, new_envelope_id
from gateway.queue.intake import Intake, Receipt
from gateway.queue.resp import parse_reply
from tests.support.queue import queued, queued_envelope

KEYS = Keys("ns")
strings = st.text(max_size=20)  # quotes, backslashes, control characters, any Unicode


def bulk_strings(entry: bytes) -> list[bytes]:
    """The bulk strings of an encoded entry, read back with the RESP parser."""
    parsed = parse_reply(bytearray(b"*%d\r\n" % ARGS_PER_MESSAGE + entry), 0)
    items, end = parsed
    assert end == len(entry) + len(b"*%d\r\n" % ARGS_PER_MESSAGE)
    return items


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=200),
    sender=strings,
    control_id=strings,
    peer=strings,
    stage=st.sampled_from(["message", "rejected", "ack"]),
    meta=st.dictionaries(strings, strings, max_size=3),
    window=st.sampled_from([0, 3600]),
    seq=st.integers(min_value=0, max_value=10**12),
)
def test_an_entry_is_the_dramatiq_message_of_the_envelope(raw, sender, control_id, peer, stage, meta, window, seq):
    sent = Envelope(
        id=new_envelope_id(), raw=raw, received_at=1_700_000_000_123, sender=sender, control_id=control_id,
        peer=peer, kind=stage, meta=meta,
    )  # fmt: skip
    received = Received(sent.raw, sent.sender, sent.control_id, sent.peer, sent.kind, sent.meta)
    entry = EntryEncoder(KEYS, window).encode(sent.id, sent.received_at, received)
    seq_key, dedup_key, digest, redis_id, prefix, suffix = bulk_strings(entry)
    processed = stage == "message"
    assert seq_key == (KEYS.sequence(sender).encode() if processed else b"")
    deduplicated = processed and window and control_id
    assert dedup_key == (KEYS.dedup(sender, control_id).encode() if deduplicated else b"")
    assert digest == (content_digest(raw).encode() if deduplicated else b"")
    assert redis_id == sent.id.encode()

    # What the script stores: the JSON with the sequence number put in, as dramatiq reads it.
    message = Message.decode(prefix + str(seq).encode() + suffix)
    assert (message.queue_name, message.actor_name, message.kwargs) == (QUEUE, ACTOR, {})
    assert message.message_id == sent.id and message.message_timestamp == sent.received_at
    assert message.options == {"redis_message_id": sent.id}
    assert message.args[0] == {**sent.to_json(), "seq": seq}
    assert Envelope.from_json(message.args[0]) == replace(sent, seq=seq)


def test_envelope_ids_are_unique_version_4_uuids():
    ids = [new_envelope_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert {uuid.UUID(i).version for i in ids} == {4} and all(str(uuid.UUID(i)) == i for i in ids)


def test_a_message_that_cannot_be_encoded_is_refused_alone(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> list[object]:
        intake = Intake(redis_url, namespace=redis_namespace)
        await intake.start()
        try:
            broken = queued_envelope(control_id="2")
            broken.meta["reason"] = object()  # type: ignore[assignment]  # not JSON
            sent = [queued_envelope(control_id="1"), broken, queued_envelope(control_id="3")]
            return list(await asyncio.gather(*(intake.submit(e) for e in sent), return_exceptions=True))
        finally:
            await intake.close()

    first, broken, third = asyncio.run(scenario())
    assert (first, third) == (Receipt(1), Receipt(2))
    assert isinstance(broken, IntakeUnavailable)
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["1", "3"]


def test_receive_commits_what_the_listener_received(redis_url: str, redis_namespace: str) -> None:
    raw = b"MSH|^~\\&|App|Fac|||20240101||ADT^A01|7|P|2.5\rPID|1\r"

    async def scenario() -> list[tuple[Receipt | None, BaseException | None]]:
        intake = Intake(redis_url, namespace=redis_namespace)
        await intake.start()
        outcomes: list[tuple[Receipt | None, BaseException | None]] = []
        done = asyncio.Event()

        def record(receipt: Receipt | None, error: BaseException | None) -> None:
            outcomes.append((receipt, error))
            if len(outcomes) == 2:
                done.set()

        try:
            intake.receive(Received(raw, "App|Fac", "7", "10.0.0.1:5000"), record)
            intake.receive(Received(raw, "App|Fac", "7", "10.0.0.1:5000"), record)  # a resend
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await intake.close()
        return outcomes

    assert asyncio.run(scenario()) == [(Receipt(1), None), (Receipt(1, duplicate=True), None)]
    (stored,) = queued(redis_url, redis_namespace)
    assert (stored.raw, stored.sender, stored.control_id, stored.peer) == (raw, "App|Fac", "7", "10.0.0.1:5000")
    assert stored.seq == 1
    assert stored.meta == {} and stored.kind == "message"
    assert abs(stored.received_at / 1000 - time.time()) < 60 and uuid.UUID(stored.id).version == 4


def test_envelopes_queued_by_the_previous_release_are_read() -> None:
    # Before Envelope.kind, the queue said what an envelope was with start_stage.
    old = {"id": "e1", "raw": "TVNI", "received_at": 1, "sender": "A|F", "control_id": "C", "peer": "", "seq": 3}
    assert Envelope.from_json({**old, "start_stage": "convert", "meta": {}}).kind == Kind.MESSAGE
    assert Envelope.from_json({**old, "start_stage": "rejected", "meta": {"reason": "AR"}}).kind == Kind.REJECTED
    assert Envelope.from_json({**old, "start_stage": "ack", "meta": {}}).kind == Kind.ACK
    assert Envelope.from_json({**old, "kind": "ack", "meta": {}}).kind is Kind.ACK
