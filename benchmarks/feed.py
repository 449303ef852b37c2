"""What the history feed costs writers, and how fast a consumer reads it.

    python benchmarks/feed.py [--transactions 600] [--threads 1 4 8] [--database-url URL] [--read 20000]

Write side: ``--threads`` threads apply small transaction Bundles (a Patient and two Observations,
one database transaction each: the most commits per change, the worst case for a lock held until
commit) through ``ResourceStore.apply_bundle``, twice per thread count:

* ``ordered``: as the store runs, taking feed positions from the counter row that stays locked
  until commit (gateway/store/feed_positions.py);
* ``unordered``: positions from a counter in this process instead, nothing locked: what writing
  costs without the commit-order guarantee (same rows, same indexes; not a correct feed).

It prints transactions/s for both, and for ``ordered`` how long a transaction held the counter
(from taking positions to the end of its commit): with one writer at a time in that window, its
inverse bounds the commits per second of all writers together. Read side: ``--read`` changes
written in bulk beforehand, then read from the start in pages of 1000 (changes/s).
SQLite by default (its writers are serialized by BEGIN IMMEDIATE anyway); ``--database-url`` a
PostgreSQL base URL (a temporary schema is made and dropped).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from search import postgres_schema  # noqa: E402

from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.store import feed_positions  # noqa: E402
from gateway.store.feed import read_changes  # noqa: E402
from gateway.store.resources import ResourceStore  # noqa: E402
from gateway.store.transaction import plan_changes  # noqa: E402
from gateway.store.writer import Job  # noqa: E402


def bundle(run: str, n: int) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": f"{run}-p{n}", "name": [{"family": f"F{n}"}]}
    entries = [{"resource": patient, "request": {"method": "PUT", "url": f"Patient/{run}-p{n}"}}]
    for k in range(2):
        observation = {
            "resourceType": "Observation",
            "id": f"{run}-o{n}-{k}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{run}-p{n}"},
            "valueQuantity": {"value": n + k, "unit": "/min"},
        }
        entries.append({"resource": observation, "request": {"method": "PUT", "url": f"Observation/{run}-o{n}-{k}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


_UNORDERED = itertools.count(10**15)  # far above the counter's positions, never reused


@contextmanager
def unordered() -> Iterator[None]:
    """Positions from a counter in this process: unique, but not in commit order, and nothing locked."""
    original, counter, lock = feed_positions.take, _UNORDERED, threading.Lock()

    def take(conn: Connection, count: int) -> int:
        with lock:
            first = next(counter)
            for _ in range(count - 1):
                next(counter)
        return first

    feed_positions.take = take  # type: ignore[assignment]
    try:
        yield
    finally:
        feed_positions.take = original  # type: ignore[assignment]


@contextmanager
def hold_times() -> Iterator[threading.local]:
    """Record when each thread's transaction took its positions (``.taken``)."""
    original, local = feed_positions.take, threading.local()

    def take(conn: Connection, count: int) -> int:
        first = original(conn, count)
        local.taken = time.perf_counter()
        return first

    feed_positions.take = take  # type: ignore[assignment]
    try:
        yield local
    finally:
        feed_positions.take = original  # type: ignore[assignment]


def write(store: ResourceStore, run: str, transactions: int, threads: int) -> tuple[float, list[float]]:
    """Transactions per second of ``threads`` threads applying ``transactions`` bundles in all, one
    transaction each, and the seconds each held the feed counter (from taking positions to the end of
    its commit)."""
    numbers = iter(range(transactions))
    lock = threading.Lock()
    held: list[float] = []
    errors: list[BaseException] = []

    with hold_times() as local:

        def work() -> None:
            try:
                loop()
            except BaseException as exc:  # noqa: BLE001 - raised below
                errors.append(exc)

        def loop() -> None:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                with store.transaction() as conn:
                    store.write(conn, [Job(plan_changes(bundle(run, n)))])
                    conn.commit()
                held.append(time.perf_counter() - local.taken)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    return transactions / (time.perf_counter() - started), held


def read_rate(engine: Engine, changes: int) -> float:
    store = ResourceStore(engine)
    for start in range(0, changes, 3 * 300):  # 300 bundles of 3 changes per transaction
        with store.transaction() as conn:
            jobs = [Job(plan_changes(bundle("read", n))) for n in range(start // 3, start // 3 + 300)]
            store.write(conn, jobs)
            conn.commit()
    read, after, started = 0, None, time.perf_counter()
    with engine.connect() as conn:
        while True:
            page = read_changes(conn, after, 1000)
            if not page.changes:
                break
            read, after = read + len(page.changes), page.next_position
    return read / (time.perf_counter() - started)


def bench(url: str, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    migrate(engine)
    store = ResourceStore(engine)
    write(store, "warm", 50, 2)
    for threads in args.threads:
        with unordered():
            free, _ = write(store, f"u{threads}", args.transactions, threads)
        ordered, held = write(store, f"o{threads}", args.transactions, threads)
        ms = sorted(h * 1000 for h in held)
        print(
            f"{threads:2d} thread(s): ordered {ordered:7.1f} tx/s, unordered {free:7.1f} tx/s "
            f"({(ordered / free - 1) * 100:+.0f}%); counter held {statistics.mean(ms):.2f} ms mean, "
            f"{ms[int(len(ms) * 0.99) - 1]:.2f} ms p99 (bound {1000 / statistics.mean(ms):.0f} commits/s)"
        )
    if args.read:
        print(f"feed read: {read_rate(engine, args.read):,.0f} changes/s in pages of 1000 ({args.read:,} changes)")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=600, help="per thread count and mode")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--database-url", default=None, help="PostgreSQL base URL (default: a SQLite file)")
    parser.add_argument("--read", type=int, default=20_000, help="changes to read back (0: skip)")
    args = parser.parse_args()
    if args.database_url:
        with postgres_schema(args.database_url) as url:
            print(f"PostgreSQL, {args.transactions} transactions of 3 resources per run")
            bench(url, args)
    else:
        with tempfile.TemporaryDirectory() as directory:
            print(f"SQLite, {args.transactions} transactions of 3 resources per run")
            bench(f"sqlite:///{Path(directory) / 'feed.sqlite3'}", args)


if __name__ == "__main__":
    main()
