"""What the console's dashboard costs the database: its per-sender figures over a large archive.

    python benchmarks/console_dashboard.py [--rows 200000] [--senders 20] [--database-url URL]

Fills a message archive (SQLite in a temporary directory unless ``--database-url``) with ``--rows``
messages from ``--senders`` senders spread over the last two days, a dead letter for one in fifty,
then times ``sender_activity`` (gateway/journal/sender_activity.py), the query behind every refresh
of the dashboard (every 5 seconds for each open dashboard): median and worst of 10 runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.db.schema import dead_letter, message_archive  # noqa: E402
from gateway.journal.sender_activity import sender_activity  # noqa: E402

BATCH = 5000
DAY_MS = 86_400_000


def fill(engine, rows: int, senders: int, now_ms: int) -> None:  # type: ignore[no-untyped-def]
    raw = b"MSH|^~\\&|APP|FAC|GW|GW|20240101120000||ADT^A08^ADT_A01|X|P|2.5.1\rPID|1||1^^^H^MR||Doe^Jane\r"
    for start in range(0, rows, BATCH):
        archive, letters = [], []
        for n in range(start, min(rows, start + BATCH)):
            at = now_ms - (n * 2 * DAY_MS) // rows
            sender = f"APP{n % senders}|FAC"
            failed = n % 50 == 0
            row_id = str(uuid.uuid4())
            archive.append(
                {
                    "id": row_id,
                    "sender": sender,
                    "control_id": f"C{n}",
                    "seq": n,
                    "message_type": "ADT^A08^ADT_A01",
                    "peer": "",
                    "received_at": at,
                    "raw": raw,
                    "status": "failed" if failed else "processed",
                    "attempts": 1,
                    "updated_at": at,
                    "detail": "",
                    "notes": "",
                }
            )
            if failed:
                letters.append(
                    {
                        "id": str(uuid.uuid4()),
                        "envelope_id": row_id,
                        "sender": sender,
                        "control_id": f"C{n}",
                        "stage": "convert",
                        "reason": "no map",
                        "error_type": "MappingError",
                        "attempts": 1,
                        "created_at": at,
                        "status": "open",
                        "raw": raw,
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(message_archive), archive)
            if letters:
                conn.execute(insert(dead_letter), letters)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--senders", type=int, default=20)
    parser.add_argument("--database-url", help="an empty database (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.database_url or f"sqlite:///{tmp}/bench.sqlite3")
        migrate(engine)
        now_ms = int(time.time() * 1000)
        started = time.perf_counter()
        fill(engine, args.rows, args.senders, now_ms)
        backend = engine.url.get_backend_name()
        print(f"filled {args.rows:,} archived messages in {time.perf_counter() - started:.1f} s ({backend})")
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = int(midnight.timestamp() * 1000)
        timings = []
        for _ in range(10):
            started = time.perf_counter()
            found = sender_activity(engine, since, int(time.time() * 1000))
            timings.append((time.perf_counter() - started) * 1000)
        median, worst = statistics.median(timings), max(timings)
        print(f"sender_activity: {len(found)} senders, median {median:.1f} ms, worst {worst:.1f} ms")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
