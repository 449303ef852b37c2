"""A batch over MLLP (a frame holding BHS ... BTS): every message through the listener's triage and
intake, one batch acknowledgement back; over real sockets, committed to a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import uuid
from collections.abc import AsyncIterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.hl7.batch import BatchEnd, BatchStart, FileEnd, FileStart, ReadMessage, read_batch
from gateway.hl7.message import parse
from gateway.mllp.framing import encode_frame
from gateway.mllp.limits import Limits
from gateway.mllp.server import MllpServer
from gateway.mllp.triage import IntakeRules, Triage
from gateway.queue.intake import Intake
from gateway.services.batch_frames import BatchFrames
from tests.support.mllp import RawClient, adt
from tests.support.queue import queued

TYPES = Triage(IntakeRules(supports=lambda c, t: (c, t) in {("ADT", "A01")}, known_codes=frozenset({"ADT"})))


def batch(*messages: bytes, control_id: str = "BATCH-42", count: int | None = None, fhs: bool = False) -> bytes:
    body = b"".join(messages)
    bhs = f"BHS|^~\\&|LAB|LABF|GW|GWF|20240101120000||||{control_id}\r".encode()
    bts = f"BTS|{len(messages) if count is None else count}\r".encode()
    if fhs:
        return b"FHS|^~\\&|LAB|LABF|GW|GWF|20240101120000||||FILE-7\r" + bhs + body + bts + b"FTS|1\r"
    return bhs + body + bts


@contextlib.asynccontextmanager
async def listener(redis_url: str, namespace: str, limits: Limits | None = None) -> AsyncIterator[int]:
    intake = Intake(redis_url, namespace=namespace, timeout=2.0)
    await intake.start()
    server = MllpServer(intake, triage=TYPES, limits=limits)
    server.batches = BatchFrames(intake, server.profiles, max_message_bytes=server.limits.max_message_bytes)
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop(drain_timeout=5)
        await intake.close()


def read_ack(frame: bytes) -> tuple[list[object], list[ReadMessage]]:
    items = list(read_batch(io.BytesIO(frame)))
    return items, [item for item in items if isinstance(item, ReadMessage)]


def test_a_batch_frame_is_answered_by_a_batch_ack_listing_only_the_bad_message(
    redis_url: str, redis_namespace: str
) -> None:
    bad = adt("M-2", version="9.9")  # a version the receiver does not take: AR 203

    async def scenario() -> bytes:
        async with listener(redis_url, redis_namespace) as port:
            client = await RawClient.connect(port)
            await client.send_message(batch(adt("M-1"), bad, adt("M-3")))
            answer = await client.read_frame()
            await client.close()
            return answer

    answer = asyncio.run(scenario())
    items, acks = read_ack(answer)
    (start,) = [item for item in items if isinstance(item, BatchStart)]
    assert start.header is not None
    assert start.header.reference == "BATCH-42"  # BHS-12 = the incoming BHS-11
    assert (start.header.sending_application, start.header.receiving_application) == ("GW", "LAB")
    (end,) = [item for item in items if isinstance(item, BatchEnd)]
    assert end.declared == 1 and not end.mismatch  # BTS-1: one ACK in the batch
    (ack,) = acks
    message = parse(ack.raw.decode())
    assert message.get("MSA-1") == "AR" and message.get("MSA-2") == "M-2"
    assert message.segment("ERR") is not None and "203" in ack.raw.decode()
    envelopes = queued(redis_url, redis_namespace)
    assert [(e.control_id, e.kind) for e in envelopes] == [("M-1", "message"), ("M-2", "rejected"), ("M-3", "message")]


def test_frames_around_a_batch_keep_their_order_and_get_their_answers_in_order(
    redis_url: str, redis_namespace: str
) -> None:
    async def scenario() -> list[bytes]:
        async with listener(redis_url, redis_namespace) as port:
            client = await RawClient.connect(port)
            # Everything pipelined in one write: single, batch, empty, single, batch in a file, single.
            await client.send(
                encode_frame(adt("S-1"))
                + encode_frame(batch(adt("B-1"), adt("B-2")))
                + encode_frame(b"")  # waits behind the batch like any frame, then answered AR
                + encode_frame(adt("S-2"))
                + encode_frame(batch(adt("F-1"), count=5, fhs=True))
                + encode_frame(adt("S-3"))
            )
            answers = [await client.read_frame() for _ in range(6)]
            await client.close()
            return answers

    answers = asyncio.run(scenario())
    assert [parse(answers[i].decode()).get("MSA-2") for i in (0, 3, 5)] == ["S-1", "S-2", "S-3"]
    assert answers[1].startswith(b"BHS|") and b"BTS|0" in answers[1]  # all accepted: an empty batch
    empty = parse(answers[2].decode())
    assert (empty.get("MSA-1"), empty.get("MSA-2"), empty.get("ERR-3.1")) == ("AR", "", "100")
    items, acks = read_ack(answers[4])
    assert acks == []
    (file_start,) = [item for item in items if isinstance(item, FileStart)]
    assert file_start.header.reference == "FILE-7"
    (file_end,) = [item for item in items if isinstance(item, FileEnd)]
    assert file_end.declared == 1
    order = [e.control_id for e in queued(redis_url, redis_namespace)]
    assert order == ["S-1", "B-1", "B-2", "S-2", "F-1", "S-3"]
    seqs = [e.seq for e in queued(redis_url, redis_namespace)]
    assert seqs == sorted(seqs)


def test_a_batch_sent_again_is_all_duplicates_and_accepted(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> list[bytes]:
        async with listener(redis_url, redis_namespace) as port:
            client = await RawClient.connect(port)
            answers = []
            for _ in range(2):
                await client.send_message(batch(adt("D-1"), adt("D-2")))
                answers.append(await client.read_frame())
            await client.close()
            return answers

    first, second = asyncio.run(scenario())
    assert b"BTS|0" in first and b"BTS|0" in second
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["D-1", "D-2"]


def test_a_batch_frame_over_the_frame_limit_is_refused_as_any_frame(redis_url: str, redis_namespace: str) -> None:
    limits = Limits(max_message_bytes=2048)
    big = batch(*(adt(f"L-{i}") for i in range(40)))
    assert len(big) > 2048

    async def scenario() -> bytes:
        async with listener(redis_url, redis_namespace, limits) as port:
            client = await RawClient.connect(port)
            await client.send_message(big)
            answer = await client.read_frame()
            await client.close()
            return answer

    answer = asyncio.run(scenario())
    assert b"MSA|AR" in answer and b"HL7GW_MLLP_MAX_MESSAGE_BYTES" in answer
    assert [e.control_id for e in queued(redis_url, redis_namespace) if e.kind == "message"] == []


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.one_of(st.just(0), st.integers(1, 4)), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 400), max_size=6),
)
def test_any_mix_of_frames_and_batches_in_any_writes_keeps_arrival_order(
    redis_url: str, redis_namespace: str, shapes: list[int], cuts: list[int]
) -> None:
    """0: a single frame; n: a batch frame of n messages. Sent in writes cut anywhere."""
    run = uuid.uuid4().hex[:8]
    frames, expected, numbers = [], [], iter(range(1000))
    for shape in shapes:
        ids = [f"{run}-{next(numbers)}" for _ in range(max(shape, 1))]
        expected += ids
        frames.append(encode_frame(adt(ids[0]) if shape == 0 else batch(*(adt(i) for i in ids))))
    stream = b"".join(frames)
    points = sorted({min(c, len(stream)) for c in itertools.accumulate(cuts)} | {len(stream)})

    async def scenario() -> list[bytes]:
        async with listener(redis_url, redis_namespace) as port:
            client = await RawClient.connect(port)
            start = 0
            for point in points:
                await client.send(stream[start:point])
                start = point
            answers = [await client.read_frame() for _ in shapes]
            await client.close()
            return answers

    answers = asyncio.run(scenario())
    for shape, answer in zip(shapes, answers, strict=True):
        assert answer.startswith(b"MSH") if shape == 0 else answer.startswith(b"BHS") and b"BTS|0" in answer
    mine = [e for e in queued(redis_url, redis_namespace) if e.control_id.startswith(run)]
    assert [e.control_id for e in mine] == expected
    assert [e.seq for e in mine] == sorted(e.seq for e in mine)
