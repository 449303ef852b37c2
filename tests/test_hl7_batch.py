"""The batch reader: whatever the shape of the file and however its reads are cut, the messages
come back in order with their offsets and the counts; broken pieces are rejected, never the rest."""

from __future__ import annotations

import gzip
import io
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.hl7.batch import (
    BatchEnd,
    BatchStart,
    FileEnd,
    FileStart,
    Item,
    ReadMessage,
    RejectedPiece,
    looks_like_batch,
    open_batch_file,
    open_batch_stream,
    read_batch,
)
from gateway.hl7.batch_body import normalise
from gateway.hl7.message import parse
from tests.support.batch_files import (
    ShortReads,
    Written,
    batch_lists,
    messages,
    shapes,
    write_batch_file,
)

BOM = b"\xef\xbb\xbf"
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
read_sizes = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8)
chunk_sizes = st.sampled_from([1, 3, 7, 64, 1 << 16])

MSG1 = b"MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A01|1|P|2.5\rPID|1||111\r"
MSG2 = b"MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A01|2|P|2.5\rPID|1||222\r"


def read_all(data: bytes, sizes: list[int] | None = None, **kwargs: int) -> list[Item]:
    stream = ShortReads(data, sizes or [1 << 16])
    return list(read_batch(stream, **kwargs))  # type: ignore[arg-type]


def read_messages(items: list[Item]) -> list[ReadMessage]:
    return [i for i in items if isinstance(i, ReadMessage)]


def check_messages(items: list[Item], written: Written, data: bytes | None = None) -> None:
    data = written.data if data is None else data
    found = read_messages(items)
    assert [(m.offset, m.end, m.raw) for m in found] == written.messages
    for m in found:
        assert normalise(data[m.offset : m.end].replace(b"\x1c", b"")) == m.raw
    assert [i for i in items if isinstance(i, RejectedPiece)] == []


def check_counts(items: list[Item], written: Written) -> None:
    ends = [i for i in items if isinstance(i, BatchEnd)]
    assert [(e.read, e.declared) for e in ends] == written.batches
    assert not any(e.mismatch for e in ends)
    assert isinstance(items[-1], FileEnd) and not items[-1].mismatch
    assert items[-1].batches == len(written.batches)
    # Every message's batch and index agree with the BatchStart/BatchEnd around it.
    batch, index = None, 0
    for item in items:
        if isinstance(item, BatchStart):
            batch, index = item.batch, 0
        elif isinstance(item, ReadMessage):
            index += 1
            assert (item.batch, item.index) == (batch, index)
        elif isinstance(item, BatchEnd):
            assert (item.batch, item.read) == (batch, index)


@PROPERTY
@given(batch_lists, shapes(), read_sizes, chunk_sizes)
def test_any_batch_file_reads_back_as_its_messages(batches, shape, sizes, chunk_size):
    written = write_batch_file(batches, shape)
    items = read_all(written.data, sizes, chunk_size=chunk_size)
    check_messages(items, written)
    check_counts(items, written)
    for m in read_messages(items):
        parse(m.raw.decode("utf-8"))  # each is a message the rest of the gateway can read
    headers = [i.header for i in items if isinstance(i, BatchStart) and i.header is not None]
    assert [h.control_id for h in headers] == [f"B{n:04d}" for n in range(len(headers))]
    files = [i for i in items if isinstance(i, FileStart)]
    assert [f.header.control_id for f in files] == (["F0001"] if shape.envelope.startswith("fhs") else [])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_lists, shapes(), read_sizes)
def test_gzip_files_read_through_open_batch_file(tmp_path_factory, batches, shape, sizes):
    written = write_batch_file(batches, shape)
    path = tmp_path_factory.mktemp("gz") / "batch.hl7.gz"
    path.write_bytes(gzip.compress(written.data))
    with open_batch_file(path) as stream:
        items = list(read_batch(stream, chunk_size=sizes[0]))
    check_messages(items, written)
    check_counts(items, written)


def test_gzip_is_recognised_by_its_magic_number_too(tmp_path: Path) -> None:
    path = tmp_path / "batch.hl7"
    path.write_bytes(gzip.compress(MSG1 + MSG2))
    with open_batch_file(path) as stream:
        assert [m.raw for m in read_messages(list(read_batch(stream)))] == [MSG1, MSG2]
    for data in (gzip.compress(MSG1 + MSG2), MSG1 + MSG2):  # a stream (standard input, an upload)
        stream = open_batch_stream(ShortReads(data, [1]))  # type: ignore[arg-type]
        assert [m.raw for m in read_messages(list(read_batch(stream)))] == [MSG1, MSG2]


@PROPERTY
@given(batch_lists, shapes(), st.data())
def test_a_wrong_bts_count_is_flagged_and_every_message_still_read(batches, shape, data):
    shape.envelope = data.draw(st.sampled_from(["bhs", "fhs"]))
    declared = [data.draw(st.integers(0, 9).filter(lambda n, b=b: n != len(b))) for b in batches]
    written = write_batch_file(batches, shape, declared=declared)
    items = read_all(written.data)
    check_messages(items, written)
    ends = [i for i in items if isinstance(i, BatchEnd)]
    assert [(e.read, e.declared, e.mismatch) for e in ends] == [(len(b), d, True) for b, d in zip(batches, declared)]


def test_a_wrong_fts_count_is_flagged() -> None:
    data = b"FHS|^~\\&\rBHS|^~\\&\r" + MSG1 + b"BTS|1\rFTS|3\r"
    end = read_all(data)[-1]
    assert isinstance(end, FileEnd) and (end.declared, end.batches, end.mismatch) == (3, 1, True)


# Broken pieces: where they go, and that the messages after them are still read.

JUNK = st.sampled_from(
    [
        (b"this is not HL7\r", False),
        (b"=====\n", False),
        (b"\x00\x00\x00\r", False),
        (b"PID|1||orphan\rPV1|1\r", True),  # segments whose MSH is missing: a broken message, counted
        (b"ZZZ|x\r", True),
    ]
)


@PROPERTY
@given(st.lists(st.tuples(messages(), st.one_of(st.none(), JUNK)), min_size=1, max_size=6), read_sizes, st.booleans())
def test_broken_pieces_are_rejected_with_their_offsets_and_the_rest_is_read(pieces, sizes, enveloped):
    out = io.BytesIO()
    expected: list[tuple[int, int, bytes]] = []
    rejected: list[tuple[int, int, bytes, bool]] = []
    if enveloped:
        out.write(b"BHS|^~\\&|S|F\r")
    for segments, junk in pieces:
        if junk is not None:
            raw, counted = junk
            if raw.startswith((b"PID", b"ZZZ")) or not expected:
                # segments straight after a message would be part of it: a frame boundary separates them
                out.write(b"\x0b")
            offset = out.tell()
            out.write(raw)
            rejected.append((offset, out.tell(), raw, counted))
            if raw.startswith((b"PID", b"ZZZ")) or not expected:
                out.write(b"\x1c\r")
                rejected[-1] = (offset, out.tell(), raw, counted)
        offset = out.tell()
        raw = b"".join(s + b"\r" for s in segments)
        out.write(raw)
        expected.append((offset, out.tell(), raw))
    if enveloped:
        out.write(b"BTS|%d\r" % (len(expected) + sum(1 for r in rejected if r[3])))
    items = read_all(out.getvalue(), sizes)
    assert [(m.offset, m.end, m.raw) for m in read_messages(items)] == expected
    found = [i for i in items if isinstance(i, RejectedPiece)]
    assert [(r.offset, r.end, r.raw, r.counted) for r in found] == rejected
    for piece in found:
        assert piece.reason and b"orphan" not in piece.reason.encode()
    ends = [i for i in items if isinstance(i, BatchEnd)]
    if enveloped:
        assert len(ends) == 1 and not ends[0].mismatch


def test_text_after_the_last_segment_of_a_message_is_junk_between_messages() -> None:
    data = MSG1 + b"---- end of part one ----\r\n\r\n" + MSG2 + b"\x1a"
    items = read_all(data)
    assert [m.raw for m in read_messages(items)] == [MSG1, MSG2]
    (junk,) = [i for i in items if isinstance(i, RejectedPiece)]
    assert (junk.offset, junk.reason, junk.counted) == (
        len(MSG1),
        "text that is not HL7 segments, after a message",
        False,
    )
    assert data[junk.offset : junk.end].startswith(b"---- end")


def test_a_bad_line_inside_a_message_stays_in_it_for_the_intake_to_reject() -> None:
    broken = b"MSH|^~\\&|A|F|R|G|2024||ADT^A01|9|P|2.5\rPID|1\rnot a segment\rPV1|1\r"
    (m,) = read_messages(read_all(broken))
    assert m.raw == broken


def test_a_file_ending_inside_an_mllp_frame_is_a_truncated_message() -> None:
    data = b"\x0b" + MSG1 + b"\x1c\r\x0b" + MSG2[:30]
    items = read_all(data, [5])
    assert [m.raw for m in read_messages(items)] == [MSG1]
    (cut,) = [i for i in items if isinstance(i, RejectedPiece)]
    assert (cut.offset, cut.end, cut.counted) == (len(MSG1) + 4, len(data), True)
    assert cut.reason == "truncated message: the stream ends inside its MLLP frame"


def test_a_frame_cut_by_the_next_frame_is_a_truncated_message() -> None:
    data = b"\x0b" + MSG1[:30] + b"\x0b" + MSG2 + b"\x1c\r"
    items = read_all(data)
    assert [m.raw for m in read_messages(items)] == [MSG2]
    (cut,) = [i for i in items if isinstance(i, RejectedPiece)]
    assert cut.reason.startswith("truncated message") and (cut.offset, cut.end) == (1, 31)


def test_a_last_message_without_its_final_terminator_is_a_message() -> None:
    (m,) = read_messages(read_all(MSG1.rstrip(b"\r")))
    assert (m.raw, m.end) == (MSG1, len(MSG1) - 1)


def test_a_batch_inside_one_mllp_frame() -> None:
    data = b"\x0bBHS|^~\\&|S|F|R|G|2024||||B7\r" + MSG1 + MSG2 + b"BTS|2\x1c\r"
    items = read_all(data, [3])
    assert [m.raw for m in read_messages(items)] == [MSG1, MSG2]
    (end,) = [i for i in items if isinstance(i, BatchEnd)]
    assert (end.read, end.declared, end.header.control_id if end.header else None) == (2, 2, "B7")


def test_out_of_place_trailers_and_a_bhs_without_bts() -> None:
    data = b"BTS|0\rBHS|^~\\&\r" + MSG1 + b"BHS|^~\\&\r" + MSG2 + b"BTS|1\rBTS|1\rFTS|2\rFTS|2\r"
    items = read_all(data)
    kinds = [(type(i).__name__, getattr(i, "reason", None)) for i in items]
    assert kinds == [
        ("RejectedPiece", "BTS outside a batch"),
        ("BatchStart", None),
        ("ReadMessage", None),
        ("BatchEnd", None),
        ("BatchStart", None),
        ("ReadMessage", None),
        ("BatchEnd", None),
        ("RejectedPiece", "BTS outside a batch"),
        ("FileEnd", None),
        ("RejectedPiece", "FTS outside a file"),
        ("FileEnd", None),  # the last item is always a FileEnd
    ]
    first, second = [i for i in items if isinstance(i, BatchEnd)]
    assert (first.batch, first.declared, first.read, first.trailer_missing) == (1, None, 1, True)
    assert (second.batch, second.declared, second.read, second.trailer_missing) == (2, 1, 1, False)
    assert isinstance(items[8], FileEnd) and (items[8].declared, items[8].batches) == (2, 2)


def test_segment_names_are_read_with_each_headers_separators() -> None:
    odd = b"MSH#^~\\&#A#F#R#G#2024##ADT^A01#7#P#2.5\rPID#1##x\rNTE#a|b\r"
    data = b"BHS!@%\\*!S!F\r" + odd + MSG1 + b"BTS!2\r"
    items = read_all(data)
    assert [m.raw for m in read_messages(items)] == [odd, MSG1]
    (end,) = [i for i in items if isinstance(i, BatchEnd)]
    assert end.declared == 2 and end.header is not None and end.header.sending_application == "S"


def test_an_oversized_message_is_rejected_with_its_head_and_reading_goes_on() -> None:
    big = b"MSH|^~\\&|A|F|R|G|2024||ADT^A01|big|P|2.5\r" + b"OBX|1|ED|||" + b"x" * 5000 + b"\r"
    data = MSG1 + big + MSG2
    items = read_all(data, [100], chunk_size=64, max_message_bytes=1024)
    assert [m.raw for m in read_messages(items)] == [MSG1, MSG2]
    (piece,) = [i for i in items if isinstance(i, RejectedPiece)]
    assert (piece.offset, piece.end, piece.counted) == (len(MSG1), len(MSG1) + len(big), True)
    assert piece.reason == "message larger than 1024 bytes" and big.startswith(piece.raw)


def test_an_envelope_line_longer_than_the_limit_is_text_dropped_as_it_goes_by() -> None:
    data = b"BHS|" + b"x" * 5000 + b"\r" + MSG1
    for chunk_size in (64, 1 << 16):
        items = read_all(data, chunk_size=chunk_size, max_message_bytes=1024)
        assert [m.raw for m in read_messages(items)] == [MSG1]
        (piece,) = [i for i in items if isinstance(i, RejectedPiece)]
        assert (piece.offset, piece.end, piece.counted) == (0, 5005, True)
        assert piece.reason == "text outside a message larger than 1024 bytes"


def test_segments_before_the_first_msh_of_a_batch_count_in_it() -> None:
    data = b"BHS|^~\\&\rPID|1||lost-msh\rPV1|1\r" + MSG1 + b"BTS|2\r"
    items = read_all(data, [4])
    (piece,) = [i for i in items if isinstance(i, RejectedPiece)]
    assert (piece.reason, piece.offset, piece.batch, piece.index) == ("segments before any MSH", 9, 1, 1)
    (m,) = read_messages(items)
    assert (m.batch, m.index) == (1, 2)
    (end,) = [i for i in items if isinstance(i, BatchEnd)]
    assert (end.read, end.declared, end.mismatch) == (2, 2, False)


def test_a_utf16_file_is_refused_as_such() -> None:
    data = "MSH|^~\\&|A|B\rPID|1\r".encode("utf-16")
    for limit in (1024, 16):
        (piece,) = [i for i in read_all(data, max_message_bytes=limit) if isinstance(i, RejectedPiece)]
        assert piece.reason.startswith("UTF-16 text") and (piece.offset, piece.end) == (0, len(data))


def test_a_bom_before_a_later_file_in_a_concatenation() -> None:
    data = b"\xef\xbb\xbf" + MSG1 + b"\xef\xbb\xbf" + MSG2
    found = read_messages(read_all(data, [2]))
    assert [(m.offset, m.raw) for m in found] == [(3, MSG1), (len(MSG1) + 6, MSG2)]


def test_an_empty_stream_ends_with_a_file_end() -> None:
    assert read_all(b"") == [FileEnd(None, None, 0)]
    assert read_all(b"\r\n \r\n") == [FileEnd(None, None, 0)]


# Resuming after a committed message.


@PROPERTY
@given(batch_lists, shapes(), st.data())
def test_resume_from_any_message_end_reads_exactly_the_rest(batches, shape, data):
    written = write_batch_file(batches, shape)
    items = read_all(written.data)
    found = read_messages(items)
    if not found:
        return
    cut = data.draw(st.sampled_from(found))
    stream = io.BytesIO(written.data)
    stream.seek(cut.end)
    rest = list(read_batch(stream, start=cut.end, start_batch=cut.batch, start_index=cut.index, chunk_size=5))
    assert read_messages(rest) == [m for m in found if m.offset >= cut.end]
    assert not [i for i in rest if isinstance(i, RejectedPiece)]
    # The batch the resume started in ends with the same count as in a whole read.
    whole_ends = [i for i in items if isinstance(i, BatchEnd)]
    rest_ends = [i for i in rest if isinstance(i, BatchEnd)]
    tail = whole_ends[len(whole_ends) - len(rest_ends) :]
    assert [(e.batch, e.read, e.declared, e.mismatch) for e in rest_ends] == [
        (e.batch, e.read, e.declared, e.mismatch) for e in tail
    ]
    assert isinstance(rest[-1], FileEnd) and isinstance(items[-1], FileEnd)
    assert rest[-1].mismatch == items[-1].mismatch


# looks_like_batch: the MLLP and HTTP ways in tell a batch from a message.


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"BHS|^~\\&|S\r" + MSG1 + b"BTS|1\r", True),
        (b"\xef\xbb\xbf\r\nFHS|^~\\&\r", True),
        (b"FHS#^~\\&\r", True),
        (MSG1, False),
        (b"BHSX|", False),
        (b"", False),
    ],
)
def test_looks_like_batch(payload: bytes, expected: bool) -> None:
    assert looks_like_batch(payload) is expected


# Memory: a long stream is read in constant memory.


class SyntheticBatch(io.RawIOBase):
    """``count`` messages in one BHS batch, made while read (the file itself is never in memory)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.made = 0
        self.pending = b"BHS|^~\\&|S|F|R|G|2024||||B1\r"

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while len(self.pending) < n and self.made <= self.count:
            if self.made == self.count:
                self.pending += b"BTS|%d\r" % self.count
            else:
                self.pending += MSG1.replace(b"|1|P|", b"|%d|P|" % self.made)
            self.made += 1
        piece, self.pending = self.pending[:n], self.pending[n:]
        return piece


def test_a_hundred_thousand_messages_are_read_in_bounded_memory() -> None:
    stream = SyntheticBatch(100_000)
    tracemalloc.start()
    try:
        count = last = 0
        for item in read_batch(stream):  # type: ignore[arg-type]
            if isinstance(item, ReadMessage):
                count += 1
                last = item.index
            elif isinstance(item, BatchEnd):
                assert (item.read, item.declared, item.mismatch) == (100_000, 100_000, False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == last == 100_000
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


# Any bytes at all: no crash, pieces in order without overlap, and nothing lost but blank lines,
# framing and the envelope segments the items stand for.

SOUP_TOKENS = st.sampled_from(
    [
        MSG1,
        MSG2,
        b"PID|1||x\r",
        b"BHS|^~\\&|S|F||||||B1\r",
        b"BTS|1\r",
        b"FHS|^~\\&\r",
        b"FTS|1\n",
        b"\x0b",
        b"\x1c",
        b"\x1c\r",
        b"\r",
        b"\n",
        b"\r\n",
        b"\xef\xbb\xbf",
        b" \t",
        b"garbage",
        b"MSH",
        b"MSH|",
        b"\x1a",
        b"\rMSH|^~\\&|A\r\n",
        b"BHS",
        b"\xef\xbb",
        b"OBX|1|TX|||text\r\n\r\n",
        b"  \r",
        b"MSH#^~\\&#X\nPID#1\n",
    ]
)
soups = st.lists(st.one_of(SOUP_TOKENS, st.binary(max_size=6)), max_size=30).map(b"".join)


@PROPERTY
@given(soups, read_sizes)
def test_any_bytes_read_without_loss(data, sizes):
    items = read_all(data, sizes)
    assert isinstance(items[-1], FileEnd)
    pieces = sorted(
        [(i.offset, i.end) for i in items if isinstance(i, (ReadMessage, RejectedPiece))]
        + [
            (i.header.offset, i.header.offset + len(i.header.raw))
            for i in items
            if isinstance(i, (FileStart, BatchStart)) and i.header
        ]
    )
    for (a, b), (c, _) in zip(pieces, pieces[1:]):
        assert a < b <= c
    for m in read_messages(items):
        assert m.raw.startswith(b"MSH") and data[m.offset : m.offset + 3] == b"MSH"
        assert m.raw.endswith(b"\r")
        here = data[m.offset : m.end].replace(b"\x1c", b"").replace(BOM, b"")  # framing and BOM lines are blank
        assert normalise(here) == normalise(m.raw.replace(BOM, b""))
    rest = bytearray(data)
    for a, b in pieces:
        rest[a:b] = b"\r" * (b - a)
    for line in re.split(rb"[\r\n\x0b\x1c]", bytes(rest)):
        line = line.replace(b"\xef\xbb\xbf", b"").strip(b" \t\x1a")
        assert not line or line[:3] in (b"BTS", b"FTS"), line


@PROPERTY
@given(soups.map(lambda d: d.replace(b"\x0b", b"").replace(b"\x1c", b"")), st.data())
def test_resume_after_any_message_of_any_bytes_finds_the_same_pieces(data, draw):
    items = read_all(data)
    found = read_messages(items)
    if not found:
        return
    cut = draw.draw(st.sampled_from(found))
    stream = io.BytesIO(data)
    stream.seek(cut.end)
    rest = list(read_batch(stream, start=cut.end, start_batch=cut.batch, start_index=cut.index, chunk_size=3))

    def pieces(of: list[Item]) -> list[tuple[int, int, bytes, bool]]:
        # (the reason of junk may differ: "after a message" is not known after a resume)
        return [
            (i.offset, i.end, i.raw, isinstance(i, ReadMessage))
            for i in of
            if isinstance(i, (ReadMessage, RejectedPiece)) and i.offset >= cut.end
        ]

    assert pieces(rest) == pieces(items)
