"""Every MLLP frame that ends with an end block gets exactly one answer (issue 22, item 3): fuzzed
frames over real TCP to a real listener committing to a real Redis, each followed by a good message
on the same connection that must still be accepted."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from gateway.mllp.framing import COMMIT_ACK, COMMIT_NAK, END_BLOCK, START_BLOCK, FrameDecoder, encode_frame
from gateway.mllp.server import MllpServer
from tests.support.mllp import adt, listening
from tests.support.queue import queued

_BLOCKS = START_BLOCK + END_BLOCK
#: What a frame may hold: anything but the block characters (they cannot be inside a payload).
payloads = st.one_of(
    st.binary(max_size=48),
    st.text(alphabet=" \t\r\n\x0c", max_size=8).map(str.encode),  # blank: nothing inside
    st.binary(max_size=48).map(lambda tail: b"MSH|^~\\&|" + tail),  # a header that goes wrong somewhere
).map(lambda raw: bytes(b for b in raw if b not in _BLOCKS))
#: Bytes before the start block: discarded by the listener (end blocks and CRs included).
junk = st.binary(max_size=12).map(lambda raw: raw.replace(START_BLOCK, b""))


class Peer:
    """A blocking MLLP client socket that reads whole frames."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []

    def read_frame(self) -> bytes:
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the listener")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def msa(frame: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 of an acknowledgement, whatever its field separator."""
    line = next(seg for seg in frame.split(b"\r") if seg.startswith(b"MSA"))
    fields = line.split(line[3:4]) + [b"", b""]
    return fields[1].decode(), fields[2].decode()


def err_code(frame: bytes) -> str:
    line = next(seg for seg in frame.split(b"\r") if seg.startswith(b"ERR"))
    return line.split(line[3:4])[3].split(b"^")[0].decode()


@pytest.fixture
def gateway(redis_url: str, redis_namespace: str) -> Iterator[tuple[MllpServer, int]]:
    """A real listener on a free port, served by an event loop of its own in a thread, so that the
    hypothesis test below can talk to it with plain blocking sockets, example after example."""
    up: list[tuple[MllpServer, int, asyncio.AbstractEventLoop, asyncio.Event]] = []
    started = threading.Event()

    async def serve() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            stop = asyncio.Event()
            up.append((server, port, asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="mllp-listener")
    thread.start()
    try:
        assert started.wait(30), "the listener did not start"
        server, port, loop, stop = up[0]
        yield server, port
    finally:
        if up:
            up[0][2].call_soon_threadsafe(up[0][3].set)
        thread.join(30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=junk, payload=payloads, together=st.booleans())
@example(before=b"", payload=b"", together=False)
@example(before=b"", payload=b"  \r\n", together=True)
@example(before=b"", payload=b"junk", together=False)
@example(before=b"junk\x1c\r", payload=b"", together=False)
@example(before=b"", payload=COMMIT_ACK, together=True)
def test_every_frame_gets_one_answer_and_the_connection_goes_on(
    gateway: tuple[MllpServer, int], before: bytes, payload: bytes, together: bool
) -> None:
    assume(b"ACK" not in payload)  # an incoming ACK message is stored, never answered (docs/mllp.md)
    _, port = gateway
    control_id = f"GOOD-{uuid.uuid4().hex[:12]}"
    good = encode_frame(adt(control_id))
    peer = Peer(port)
    try:
        frame = before + encode_frame(payload)
        if together:
            peer.sock.sendall(frame + good)
        else:
            peer.sock.sendall(frame)
            peer.sock.sendall(good)
        if payload not in (COMMIT_ACK, COMMIT_NAK):  # MLLP release 2: the peer's commit ACK of our ACK
            answer = peer.read_frame()
            code, acknowledged = msa(answer)
            assert code in {"AA", "AE", "AR"}, answer
            if not payload.strip():
                assert (code, acknowledged, err_code(answer)) == ("AR", "", "100")
        after = peer.read_frame()
        assert msa(after) == ("AA", control_id), after  # one answer only, and the connection goes on
    finally:
        peer.close()


def test_blank_frames_count_as_intake_rejections_and_nothing_is_kept(
    gateway: tuple[MllpServer, int], redis_url: str, redis_namespace: str
) -> None:
    def rejections() -> float:
        return REGISTRY.get_sample_value("hl7gw_intake_rejections_total", {"err_code": "100"}) or 0.0

    server, port = gateway
    before = rejections()
    peer = Peer(port)
    try:
        # Pipelined: a message, two blank frames, a message; answered in arrival order.
        peer.sock.sendall(encode_frame(adt("B-1")) + b"\x0b\x1c\r\x0b \r\n\x1c\r" + encode_frame(adt("B-2")))
        answers = [peer.read_frame() for _ in range(4)]
    finally:
        peer.close()
    assert [msa(a) for a in answers] == [("AA", "B-1"), ("AR", ""), ("AR", ""), ("AA", "B-2")]
    assert b"no MSH segment" in answers[1]
    assert (server.stats.empty_frames, server.stats.rejected, server.stats.accepted) == (2, 2, 2)
    assert rejections() == before + 2
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["B-1", "B-2"]  # nothing kept of them


def cut_off_letters(redis_url: str, namespace: str) -> list[bytes]:
    """The raw bytes of the fragments kept as intake dead letters so far, in arrival order."""
    return [e.raw for e in queued(redis_url, namespace) if e.meta.get("reason", "").endswith(CUT_OFF_REASON)]


CUT_OFF_REASON = "frame cut off by a new start block"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fragments=st.lists(payloads, min_size=1, max_size=3), together=st.booleans())
@example(fragments=[b"MSH|^~\\&|SND|FAC|GW|GWF|2024||ADT^A01|HALF-1|P|2.5.1\rPID|1"], together=False)
@example(fragments=[b"", b" \r\n"], together=True)
def test_every_fragment_cut_off_by_a_start_block_is_kept_or_counted_and_the_next_frame_answered(
    gateway: tuple[MllpServer, int], redis_url: str, redis_namespace: str, fragments: list[bytes], together: bool
) -> None:
    def cut_off() -> float:
        return REGISTRY.get_sample_value("hl7gw_mllp_unfinished_frames_total", {"reason": "cut-off"}) or 0.0

    server, port = gateway
    counted, kept = cut_off(), len(cut_off_letters(redis_url, redis_namespace))
    control_id = f"AFTER-{uuid.uuid4().hex[:12]}"
    peer = Peer(port)
    try:
        cut = b"".join(START_BLOCK + fragment for fragment in fragments)
        good = encode_frame(adt(control_id))
        if together:
            peer.sock.sendall(cut + good)
        else:
            peer.sock.sendall(cut)
            peer.sock.sendall(good)
        assert msa(peer.read_frame()) == ("AA", control_id)  # the cut-off fragments get no answer
    finally:
        peer.close()
    assert cut_off() == counted + len(fragments)
    expected = [fragment for fragment in fragments if fragment.strip()]  # whitespace: counted, not kept
    for _ in range(100):  # the letters go to Redis with the next frame, maybe in another commit
        letters = cut_off_letters(redis_url, redis_namespace)
        if len(letters) >= kept + len(expected):
            break
        time.sleep(0.02)
    assert letters[kept:] == expected
