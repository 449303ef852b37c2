"""MLLP framing: payloads come back exactly, whatever the chunking and the junk around them."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mllp.framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    OVERSIZED_HEAD_BYTES,
    START_BLOCK,
    FrameDecoder,
    FrameTooLarge,
    FramingError,
    encode_frame,
)

PROPERTY = settings(max_examples=200, deadline=None)

payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
junk = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


@PROPERTY
@given(st.lists(st.tuples(junk, payloads), max_size=8), junk, st.lists(st.integers(min_value=0), max_size=30))
def test_payloads_survive_junk_and_any_chunking(frames, tail, cuts):
    stream = b"".join(j + encode_frame(p) for j, p in frames) + tail
    decoder = FrameDecoder()
    assert feed_all(decoder, split_at(stream, cuts)) == [p for _, p in frames]
    assert decoder.discarded_bytes == sum(len(j) for j, _ in frames) + len(tail)
    assert not decoder.in_frame and decoder.pending_bytes == 0


@PROPERTY
@given(
    st.lists(st.tuples(junk, payloads, st.booleans()), max_size=8),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_missing_trailing_cr_is_tolerated_by_default(frames, cuts):
    stream = b"".join(j + START_BLOCK + p + END_BLOCK + (CARRIAGE_RETURN if cr else b"") for j, p, cr in frames)
    assert feed_all(FrameDecoder(), split_at(stream, cuts)) == [p for _, p, _ in frames]


@PROPERTY
@given(
    st.lists(
        st.tuples(junk, st.binary(max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))), max_size=8
    ),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_oversized_frames_are_dropped_and_reported(frames, cuts):
    limit = 20
    stream = b"".join(j + encode_frame(p) for j, p in frames)
    decoder = FrameDecoder(max_frame_bytes=limit)
    got: list[bytes] = []
    errors = 0
    for chunk in split_at(stream, cuts):
        try:
            got.extend(decoder.feed(chunk))
        except FrameTooLarge as exc:
            errors += 1
            got.extend(exc.frames)
        assert decoder.pending_bytes <= limit
    oversized = sum(1 for _, p in frames if len(p) > limit)
    assert got == [p for _, p in frames if len(p) <= limit]
    assert decoder.dropped_frames == oversized
    assert (errors > 0) == (oversized > 0) and errors <= oversized  # at most one raise per feed
    assert not decoder.in_frame


def feed_recording(decoder: FrameDecoder, chunks: list[bytes]) -> list[tuple[list[bytes], str]]:
    """Per chunk: the payloads returned (or carried by the exception) and the exception type."""
    out: list[tuple[list[bytes], str]] = []
    for chunk in chunks:
        try:
            out.append((decoder.feed(chunk), ""))
        except FramingError as exc:
            out.append((exc.frames, type(exc).__name__))
    return out


@PROPERTY
@given(
    st.lists(
        st.one_of(payloads.map(lambda p: (True, encode_frame(p))), st.binary(max_size=30).map(lambda b: (False, b)))
    ),
    st.integers(min_value=1, max_value=40),
    st.booleans(),
)
def test_a_chunk_that_is_one_whole_frame_decodes_as_byte_by_byte(chunks, limit, require_cr):
    # A chunk holding exactly one frame, read between frames, takes a shortcut; it must change
    # nothing: same payloads, same problems, same counters and state as its bytes one at a time.
    whole, bytewise = FrameDecoder(limit, require_cr), FrameDecoder(limit, require_cr)
    for is_frame, chunk in chunks:
        if not is_frame or whole.in_frame:
            assert feed_recording(whole, [chunk]) == feed_recording(bytewise, [chunk])
            continue
        got = feed_recording(whole, [chunk])[0]
        one_by_one = feed_recording(bytewise, [chunk[i : i + 1] for i in range(len(chunk))])
        assert got[0] == [p for frames, _ in one_by_one for p in frames]
        assert got[1] == next((problem for _, problem in one_by_one if problem), "")
        assert (whole.discarded_bytes, whole.dropped_frames) == (bytewise.discarded_bytes, bytewise.dropped_frames)
        assert (whole.in_frame, whole.unfinished()) == (bytewise.in_frame, bytewise.unfinished())


def test_encode_frame():
    assert encode_frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"
    for bad in (b"a\x0bb", b"a\x1cb"):
        with pytest.raises(ValueError):
            encode_frame(bad)


def test_frame_too_large_raises_when_the_limit_is_crossed_and_keeps_other_frames():
    decoder = FrameDecoder(max_frame_bytes=5)
    assert decoder.feed(b"\x0b12345") == []
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"6")
    assert caught.value.frames == [] and decoder.in_frame and decoder.pending_bytes == 0
    # The rest of the oversized frame is dropped; frames around it in one chunk are kept.
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"789\x1c\r\x0bok\x1c\r\x0btoolong\x1c\r\x0bok2\x1c\r")
    assert caught.value.frames == [b"ok", b"ok2"]
    assert decoder.feed(b"\x0bnext\x1c\r") == [b"next"]


def test_start_block_inside_a_frame_abandons_it():
    decoder = FrameDecoder()
    assert decoder.feed(b"\x0bpartial") == []
    assert decoder.feed(b"\x0bgood\x1c\r") == [b"good"]
    assert decoder.discarded_bytes == len(b"\x0bpartial") and decoder.dropped_frames == 1


def test_in_frame_and_pending_bytes_follow_the_stream():
    decoder = FrameDecoder()
    assert not decoder.in_frame
    decoder.feed(b"junk\x0bMSH|")
    assert decoder.in_frame and decoder.pending_bytes == 4 and decoder.discarded_bytes == 4
    assert decoder.feed(b"x\x1c") == [b"MSH|x"]
    assert not decoder.in_frame and decoder.pending_bytes == 0
    assert decoder.feed(b"\r") == [] and decoder.discarded_bytes == 4  # the trailing CR is framing


def test_reset_forgets_the_unfinished_frame():
    decoder = FrameDecoder()
    decoder.feed(b"\x0bhalf")
    decoder.reset()
    assert not decoder.in_frame and decoder.pending_bytes == 0 and decoder.discarded_bytes == 5
    assert decoder.feed(b"rest\x1c\r\x0bwhole\x1c\r") == [b"whole"]


def test_required_trailing_cr_holds_the_payload_until_the_cr():
    decoder = FrameDecoder(require_trailing_cr=True)
    assert decoder.feed(b"\x0bone\x1c") == []
    assert decoder.in_frame and decoder.pending_bytes == 3
    assert decoder.feed(b"\r\x0btwo\x1c\r") == [b"one", b"two"]
    assert not decoder.in_frame


def test_required_trailing_cr_drops_a_frame_without_it():
    decoder = FrameDecoder(require_trailing_cr=True)
    with pytest.raises(FramingError) as caught:
        decoder.feed(b"\x0bfirst\x1c\r\x0bbad\x1cX\x0bthird\x1c\r")
    assert not isinstance(caught.value, FrameTooLarge)
    assert caught.value.frames == [b"first", b"third"]
    assert decoder.discarded_bytes == len(b"\x0bbad\x1cX") and decoder.dropped_frames == 1
    # An end block followed directly by the next start block is also a missing CR.
    with pytest.raises(FramingError) as caught:
        decoder.feed(b"\x0bfour\x1c\x0bfive\x1c\r")
    assert caught.value.frames == [b"five"]


def test_large_frame_in_small_chunks_is_linear():
    payload = b"x" * (4 * 1024 * 1024)
    data = encode_frame(payload)
    decoder = FrameDecoder()
    started = time.perf_counter()
    out: list[bytes] = []
    for i in range(0, len(data), 512):
        out.extend(decoder.feed(data[i : i + 512]))
    elapsed = time.perf_counter() - started
    assert out == [payload]
    assert elapsed < 2.0, f"{elapsed:.2f}s for 8192 chunks: quadratic buffering?"


def test_dropped_payloads_are_handed_over_for_keeping():
    decoder = FrameDecoder(max_frame_bytes=10)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"\x0bMSH|0123456789abc")
    assert caught.value.dropped == b"MSH|0123456789abc"  # the head of an oversized frame
    assert decoder.unfinished() == b""  # what remains of it is not a frame to keep
    strict = FrameDecoder(require_trailing_cr=True)
    with pytest.raises(FramingError) as caught:
        strict.feed(b"\x0bpayload\x1cX")
    assert caught.value.dropped == b"payload"


def test_oversized_head_is_bounded():
    from gateway.mllp.framing import OVERSIZED_HEAD_BYTES

    decoder = FrameDecoder(max_frame_bytes=OVERSIZED_HEAD_BYTES * 2)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(b"\x0b" + b"x" * (OVERSIZED_HEAD_BYTES * 3))
    assert len(caught.value.dropped) == OVERSIZED_HEAD_BYTES


@PROPERTY
@given(payloads, st.integers(min_value=0))
def test_unfinished_is_what_arrived_of_the_open_frame(payload, cut):
    decoder = FrameDecoder()
    part = payload[: cut % (len(payload) + 1)]
    decoder.feed(b"junk\x0b" + part)
    assert decoder.unfinished() == part and decoder.in_frame
    decoder.feed(payload[len(part) :] + b"\x1c\r")
    assert decoder.unfinished() == b"" and not decoder.in_frame


def feed_in_order(decoder: FrameDecoder, chunks: list[bytes]) -> list[tuple[str, bytes]]:
    """What ``chunks`` gave, in stream order: ("frame", payload) and ("cut", fragment)."""
    seen: list[tuple[str, bytes]] = []
    for chunk in chunks:
        frames = decoder.feed(chunk)
        cut = decoder.take_cut_off()
        for position, frame in enumerate([*frames, None]):
            seen += [("cut", fragment) for at, fragment in cut if at == position]
            if frame is not None:
                seen.append(("frame", frame))
    return seen


@PROPERTY
@given(
    st.lists(st.tuples(st.sampled_from(["frame", "cut"]), payloads), max_size=8),
    payloads,
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_every_fragment_cut_off_by_a_start_block_is_handed_over_in_order(items, last, cuts):
    # A fragment is a start block and a payload with no end block: the next start block cuts it off.
    stream = b"".join(encode_frame(p) if kind == "frame" else START_BLOCK + p for kind, p in items)
    stream += encode_frame(last)
    decoder = FrameDecoder(keep_cut_off=True)
    assert feed_in_order(decoder, split_at(stream, cuts)) == [*items, ("frame", last)]
    assert (decoder.discarded_bytes, decoder.dropped_frames) == (0, 0)  # handed over, not dropped
    assert decoder.cut_off == [] and not decoder.in_frame


def test_a_cut_off_fragment_over_the_size_limit_is_handed_over_as_its_head():
    limit = OVERSIZED_HEAD_BYTES + 10
    big = b"H" * (OVERSIZED_HEAD_BYTES + 5)
    decoder = FrameDecoder(max_frame_bytes=limit, keep_cut_off=True)
    assert decoder.feed(START_BLOCK + big) == []
    assert decoder.feed(b"x" * 4 + START_BLOCK + b"ok" + END_BLOCK + CARRIAGE_RETURN) == [b"ok"]
    assert decoder.take_cut_off() == [(0, big + b"x" * 4)]  # within the limit: whole
    assert decoder.feed(START_BLOCK + big) == []
    assert decoder.feed(b"x" * 10 + START_BLOCK + b"ok" + END_BLOCK + CARRIAGE_RETURN) == [b"ok"]
    assert decoder.take_cut_off() == [(0, big[:OVERSIZED_HEAD_BYTES])]  # beyond it: its head
    # A frame found too large before it was cut off is reported once, as too large.
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(START_BLOCK + big + b"x" * 10)
    assert decoder.feed(START_BLOCK + b"ok" + END_BLOCK + CARRIAGE_RETURN) == [b"ok"]
    assert decoder.take_cut_off() == [] and len(caught.value.dropped) == OVERSIZED_HEAD_BYTES
