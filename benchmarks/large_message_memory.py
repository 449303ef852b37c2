"""Memory of one large message through the worker's stages, in one process.

    python benchmarks/large_message_memory.py [--mb 15] [--messages 3] [--at-once N] [--database-url URL]

The message is an ORU^R01 whose OBX-5 is an ED with a base64 attachment of ``--mb`` megabytes (a
scanned report, as MDM and ORU feeds send them). It goes through the worker's own calls, stage by
stage: decode, parse, convert, validate, and delivery to the built-in store (StoreSink, group
commit, a fresh SQLite file unless ``--database-url``). For each stage it prints the peak resident
memory (VmHWM, reset before each stage through /proc/self/clear_refs) above the resident memory
before the message (what the stage holds at once, with what the stages before it left), then,
after the message is done, its objects dropped and freed memory handed back (malloc_trim), what
stays resident (caches keyed by content). Then ``--messages`` more distinct large messages: what
stays after each. With ``--at-once N``: N more large messages handed to N threads together, first
through the worker's budget of large messages (HL7GW_WORKER_LARGE_MESSAGES_MB, its default unless
``--budget-mb``), then without one, and the peak of each. Linux only (reads /proc). tracemalloc
is not used: it counts orjson's output buffers at their reserved, never touched, size (8x the
string), far above what they cost.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import gc
import os
import re
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_settings  # noqa: E402
from gateway.convert.runtime.engine import Converter  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.deliver.source import source_of  # noqa: E402
from gateway.deliver.store_sink import StoreSink  # noqa: E402
from gateway.envelope import Envelope  # noqa: E402
from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse  # noqa: E402
from gateway.services.large_messages import LargeMessages  # noqa: E402
from gateway.validate import validate_bundle  # noqa: E402

MB = 1 << 20
_LIBC = ctypes.CDLL(None)


def rss() -> tuple[int, int]:
    """(resident now, peak resident since the last ``reset_peak``) in bytes."""
    status = Path("/proc/self/status").read_text()
    found = {k: int(v) * 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
    return found["VmRSS"], found["VmHWM"]


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def settle() -> int:
    """Collect, give freed memory back to the system, and return the resident size."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return rss()[0]


def large_message(n: int, megabytes: float) -> bytes:
    """An ORU^R01 with one ED OBX whose base64 data is ``megabytes`` long (distinct for each ``n``)."""
    payload = base64.b64encode(os.urandom(int(megabytes * MB * 3 / 4)))
    return (
        (
            f"MSH|^~\\&|LAB|HOSP|GW|GW|20240101120000||ORU^R01^ORU_R01|BIG{n}|P|2.5.1\r"
            f"PID|1||M{n}^^^HOSP^MR||Doe^Jane||19700101|F\r"
            f"OBR|1|ORD{n}||11502-2^Laboratory report^LN|||20240101115900\r"
            "OBX|1|ED|11502-2^Laboratory report^LN||^AP^PDF^Base64^"
        ).encode()
        + payload
        + b"||||||F\r"
    )


def run_message(raw: bytes, converter: Converter, sink: StoreSink, report: bool, settled: bool = True) -> None:
    """The pipeline's stages (gateway/services/pipeline.py) one by one, each stage's peak printed."""
    envelope = Envelope(str(uuid.uuid4()), raw, int(time.time() * 1000), "LAB|HOSP", "BIG", seq=1)
    base = settle() if settled else 0

    def stage(name: str, fn, *args):  # type: ignore[no-untyped-def]
        reset_peak()
        result = fn(*args)
        current, peak = rss()
        if report:
            print(f"  {name:<9} peak {(peak - base) / MB:7.1f} MB   resident after {(current - base) / MB:7.1f} MB")
        return result

    text = stage("decode", decode_message, envelope.raw)
    message = stage("parse", parse, text)
    conversion = stage("convert", converter.convert_noted, message)
    stage("validate", validate_bundle, conversion.bundle)
    source = source_of(envelope, message, converter.zone_for(message))
    code, trigger, structure = message.message_type
    stage("store", sink.deliver, conversion.bundle, source, envelope, f"{code}^{trigger}^{structure}", (), ())


def at_once(count: int, megabytes: float, budget_mb: int, converter: Converter, sink: StoreSink) -> None:
    """``count`` large messages on ``count`` threads together: peak with the budget, then without."""
    start = settle()
    for label, budget in ((f"budget {budget_mb} MB", budget_mb * MB), ("no budget", 1 << 62)):
        large = LargeMessages(budget)
        messages = [large_message(n, megabytes) for n in range(1000, 1000 + count)]
        base = settle()
        reset_peak()

        def work(raw: bytes, large: LargeMessages = large) -> None:
            with large.hold(len(raw)):
                run_message(raw, converter, sink, report=False, settled=False)

        threads = [threading.Thread(target=work, args=(raw,)) for raw in messages]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - began
        peak = rss()[1]
        messages.clear()
        print(
            f"  {count} x {megabytes:g} MB at once, {label:<14}: peak {(peak - base) / MB:7.1f} MB above the "
            f"{start / MB:.0f} MB at rest, {took:5.1f} s for all"
        )
        settle()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=15.0)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--at-once", type=int, default=0, help="then N large messages on N threads together")
    parser.add_argument("--budget-mb", type=int, default=load_settings().worker.large_messages_bytes // MB)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.database_url or f"sqlite:///{tmp}/bench.sqlite3")
        migrate(engine)
        converter = Converter.configured(load_settings().conversion)
        sink = StoreSink(engine)
        # Warm up on a small message: compiled maps and models are not the large message's cost.
        run_message(large_message(0, 0.01), converter, sink, report=False)
        messages = [large_message(n, args.mb) for n in range(1, args.messages + 2)]
        start = settle()
        size = len(messages[0]) / MB
        print(f"one {size:.1f} MB message (resident MB above the {start / MB:.0f} MB before it):")
        run_message(messages[0], converter, sink, report=True)
        messages[0] = b""
        print(f"  stays resident after the message: {(settle() - start + size * MB) / MB:.1f} MB")
        for n in range(1, len(messages)):
            reset_peak()
            run_message(messages[n], converter, sink, report=False)
            messages[n] = b""
            peak = rss()[1]
            print(
                f"  after {n + 1} large messages: {(settle() - start + (n + 1) * size * MB) / MB:.1f} MB stay resident "
                f"(peak during the last {(peak - start) / MB:.1f} MB)"
            )
        if args.at_once:
            at_once(args.at_once, args.mb, args.budget_mb, converter, sink)
        sink.close()
        engine.dispose()


if __name__ == "__main__":
    main()
