"""How fast the batch reader alone splits a batch file (no queue, no commit): messages/s and MB/s.

    python benchmarks/batch_read.py [--messages 100000] [--chunk-size 65536]

A batch file (FHS, BHS, N messages, BTS, FTS) is generated from the samples/ messages (each
template in turn, MSH-10 made unique) into a temporary directory, in three forms: segments ended
by CR, by CRLF, and CR gzipped (read through open_batch_file). Each is read once with
gateway.hl7.batch.read_batch, counting the messages; the figure is the best of ``--repeat`` runs,
as wall time and as this process's CPU time (on a machine shared with other work, the CPU
figure is the reader's own cost). MB are of the uncompressed file.
The issue's target is 10,000 messages/s split AND committed; the split alone should be a small
part of that time.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.hl7.batch import BatchEnd, ReadMessage, open_batch_file, read_batch  # noqa: E402

SAMPLES = ROOT / "samples"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def templates() -> list[bytes]:
    """Every sample message (segments ended by CR, BOM and blank lines dropped)."""
    found = []
    for path in sorted(SAMPLES.glob("*/*.hl7")):
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
        lines = [line for line in _LINE_END.split(data) if line.strip()]
        if lines and lines[0].startswith(b"MSH"):
            found.append(b"".join(line + b"\r" for line in lines))
    return found


def with_control_id(message: bytes, control_id: int) -> bytes:
    header, rest = message.split(b"\r", 1)
    sep = header[3:4]
    fields = header.split(sep)
    while len(fields) < 12:
        fields.append(b"")
    fields[9] = b"BENCH%09d" % control_id  # MSH-10 (fields[0] is "MSH", fields[1] MSH-2)
    return sep.join(fields) + b"\r" + rest


def write_file(path: Path, count: int, line_end: bytes, *, gzipped: bool) -> int:
    samples = templates()
    opener = gzip.open if gzipped else open
    size = 0
    with opener(path, "wb") as out:  # type: ignore[operator]

        def put(data: bytes) -> None:
            nonlocal size
            if line_end != b"\r":
                data = data.replace(b"\r", line_end)
            out.write(data)
            size += len(data)

        put(b"FHS|^~\\&|BENCH|SITE|HL7GW|GW|20240101||||F1\r")
        put(b"BHS|^~\\&|BENCH|SITE|HL7GW|GW|20240101||||B1\r")
        block = []
        for n in range(count):
            block.append(with_control_id(samples[n % len(samples)], n))
            if len(block) == 1000:
                put(b"".join(block))
                block.clear()
        put(b"".join(block))
        put(b"BTS|%d\rFTS|1\r" % count)
    return size


def read_file(path: Path, chunk_size: int) -> tuple[int, float, float]:
    """Messages read, wall seconds, CPU seconds of this process (the figure that other processes
    on a shared machine disturb least)."""
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    with open_batch_file(path) as stream:
        for item in read_batch(stream, chunk_size=chunk_size):
            if type(item) is ReadMessage:
                count += 1
            elif type(item) is BatchEnd:
                assert not item.mismatch, item
    return count, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1 << 16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{len(templates())} sample templates, {args.messages} messages, chunks of {args.chunk_size} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        for name, line_end, gzipped in (("CR", b"\r", False), ("CRLF", b"\r\n", False), ("CR gzip", b"\r", True)):
            path = Path(tmp) / ("batch.hl7.gz" if gzipped else "batch.hl7")
            size = write_file(path, args.messages, line_end, gzipped=gzipped)
            best = min((read_file(path, args.chunk_size) for _ in range(args.repeat)), key=lambda r: r[1])
            count, seconds, cpu = best
            assert count == args.messages, count
            print(
                f"{name:8s} {size / 1e6:7.1f} MB  wall {seconds:5.2f} s {count / seconds:9,.0f} msg/s "
                f"{size / 1e6 / seconds:6.1f} MB/s   cpu {cpu:5.2f} s {count / cpu:9,.0f} msg/s"
            )


if __name__ == "__main__":
    main()
