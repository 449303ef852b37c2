"""Store write throughput: converted sample messages applied by one or more worker processes.

    python benchmarks/store_write.py [--messages 1500] [--threads 8] [--processes 1 2] [--database-url URL]
    python benchmarks/store_write.py --wal [--messages 400] [--threads 16]
    python benchmarks/store_write.py --compare-known [--messages 600] [--rounds 3] [--database-url URL]

The part of ``benchmarks/e2e.py`` that every worker process shares: the database. The messages
(unique copies of the samples, as e2e.py makes them) are converted and validated before the clock
starts; then each process applies its share through StoreSink.deliver from ``--threads`` threads,
the worker's own path (group commit, one transaction per batch), into one fresh database: a SQLite
file (default) or a temporary schema of ``--database-url`` (PostgreSQL). For each process count it
prints messages/s, CPU ms/message and messages per commit. Comparing the counts shows what a second
writer process adds: on SQLite it mostly waits for the one write lock, and each transaction finds
its page cache emptied by the other process's commits.

``--wal`` (SQLite) shows where a commit's bytes go instead: the write-ahead log frames per message,
by the table or index whose page each frame holds. On SQLite every commit fsyncs its frames while
holding the one write lock, so this is the volume that sets how long the lock is held.

``--compare-known`` measures the writer's ``KnownRows`` hint (gateway/store/writer.py): rounds of two
runs in one process, hint off and on alternating (off first in even rounds), each into a fresh
database warmed with the first third of the messages (so most of a message's resources are stored),
then the CPU per message of this process and, on PostgreSQL, of its server backends (read from
/proc: the server must run on this machine), and the ratio on/off of the medians.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e import templates  # noqa: E402
from search import postgres_schema  # noqa: E402

from gateway.convert.runtime.engine import Converter  # noqa: E402
from gateway.db.engine import make_engine  # noqa: E402
from gateway.db.migrate import migrate  # noqa: E402
from gateway.deliver.source import source_of  # noqa: E402
from gateway.deliver.store_sink import StoreSink  # noqa: E402
from gateway.envelope import Envelope  # noqa: E402
from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse  # noqa: E402
from gateway.store.ordering import Source  # noqa: E402
from gateway.validate import validate_bundle  # noqa: E402

Work = list[tuple[dict[str, Any], Source]]


def converted(start: int, count: int, run_id: str) -> Work:
    """Unique copies number start..start+count of the samples, converted and validated."""
    found, converter = templates(), Converter.load()
    work = []
    for n in range(start, start + count):
        raw, _, _ = found[n % len(found)].render(f"{run_id}{n}")
        message = parse(decode_message(raw))
        bundle = converter.convert(message)
        validate_bundle(bundle)
        envelope = Envelope(f"{run_id}{n}", raw, int(time.time() * 1000), "BENCH|FAC", f"{run_id}{n}", seq=n + 1)
        work.append((bundle, source_of(envelope, message)))
    return work


def deliver_all(sink: StoreSink, work: Work, threads: int) -> None:
    """Apply ``work`` through ``sink`` from ``threads`` threads, as a worker's threads do."""
    pending = list(reversed(work))
    lock = threading.Lock()

    def deliver() -> None:
        while True:
            with lock:
                if not pending:
                    return
                bundle, source = pending.pop()
            sink.deliver(bundle, source)

    pool = [threading.Thread(target=deliver) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def child(url: str, start: int, count: int, threads: int, run_id: str, go: Path) -> None:
    """Convert messages start..start+count, wait for ``go``, apply them; print a JSON result."""
    work = converted(start, count, run_id)
    sink = StoreSink(make_engine(url))
    (go.parent / f"ready.{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)
    started, cpu = time.perf_counter(), time.process_time()
    deliver_all(sink, work, threads)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    sink.close()
    print(json.dumps({"elapsed": elapsed, "cpu": cpu, "commits": sink.commits}), flush=True)


def wal_by_btree(args: argparse.Namespace, directory: Path) -> None:
    """Where a commit's bytes go on SQLite: the WAL frames the measured messages append, by table
    and index. The first half of the messages fills the database (so its b-trees have some depth),
    then a checkpoint empties the WAL; the second half is applied with checkpoints off, and each
    WAL frame is attributed to the b-tree that owns its page (SQLite's ``dbstat`` table)."""
    path = directory / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA wal_autocheckpoint=0"))
    migrate(engine)
    fill, measured = args.messages // 2, args.messages - args.messages // 2
    work = converted(0, args.messages, f"wal{os.getpid()}-")
    sink = StoreSink(engine)
    deliver_all(sink, work[:fill], args.threads)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    commits = sink.commits
    deliver_all(sink, work[fill:], args.threads)
    commits = sink.commits - commits
    sink.close()
    wal = (directory / "store.db-wal").read_bytes()
    page_size = struct.unpack(">I", wal[8:12])[0]
    pages = [struct.unpack(">I", wal[at : at + 4])[0] for at in range(32, len(wal) - page_size - 23, page_size + 24)]
    with sqlite3.connect(path) as db:
        try:
            owner = dict(db.execute("SELECT pageno, name FROM dbstat"))
        except sqlite3.OperationalError:
            owner = {}  # this SQLite was built without dbstat: totals only
    by_btree = collections.Counter(owner.get(page, "(not attributed)") for page in pages)
    print(
        f"WAL of {measured} messages after {fill} ({measured / max(1, commits):.1f} messages/commit): "
        f"{len(pages) / measured:.0f} frames = {len(wal) / measured / 1024:.0f} KB per message "
        f"({page_size}-byte pages)"
    )
    for name, frames in by_btree.most_common(args.top):
        print(f"  {frames / measured:6.1f} frames/message  {name}")


def backend_cpu(pids: set[int]) -> float:
    """CPU seconds the PostgreSQL backends ``pids`` used so far (utime + stime of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def compare_known(args: argparse.Namespace) -> None:
    """CPU per message with the writer's KnownRows hint off and on, alternated in one process."""
    total = args.messages * (2 * args.rounds + 1)
    work = converted(0, total, f"ck{os.getpid()}-")
    warm, at = work[: args.messages // 3], args.messages
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            with tempfile.TemporaryDirectory() as tmp:
                context = (
                    postgres_schema(args.database_url) if args.database_url else nullcontext(f"sqlite:///{tmp}/s.db")
                )
                with context as url:
                    engine = make_engine(url)
                    pids: set[int] = set()
                    if engine.dialect.name == "postgresql":
                        event.listen(engine, "connect", lambda dbapi, _r, found=pids: found.add(dbapi.info.backend_pid))
                    migrate(engine)
                    sink = StoreSink(engine)
                    if mode == "off":
                        sink.store.known = None
                    deliver_all(sink, warm, args.threads)
                    measured, at = work[at : at + args.messages], at + args.messages
                    cpu, server = time.process_time(), backend_cpu(pids)
                    deliver_all(sink, measured, args.threads)
                    cpu, server = time.process_time() - cpu, backend_cpu(pids) - server
                    sink.close()
                    engine.dispose()
            figures[mode].append((cpu * 1000 / args.messages, server * 1000 / args.messages))
            print(
                f"round {round_} hint {mode:3s}: CPU {figures[mode][-1][0]:5.2f} ms/message here, "
                f"{figures[mode][-1][1]:5.2f} in the server",
                flush=True,
            )
    median = {mode: tuple(statistics.median(f[i] for f in rows) for i in (0, 1)) for mode, rows in figures.items()}
    for mode in ("off", "on"):
        print(
            f"median hint {mode:3s}: CPU {median[mode][0]:5.2f} ms/message here, {median[mode][1]:5.2f} in the server"
        )
    ratio = [median["on"][i] / median["off"][i] if median["off"][i] else float("nan") for i in (0, 1)]
    print(f"hint on/off: {ratio[0]:.2f} here, {ratio[1]:.2f} in the server (SQLite: none; it makes no claims)")


def run(url: str, processes: int, args: argparse.Namespace, run_id: str, signals: Path) -> None:
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    go = signals / "go"
    share = args.messages // processes
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, str(p * share), str(share), str(args.threads), run_id, str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    while len(list(signals.glob("ready.*"))) < processes and all(c.poll() is None for c in children):
        time.sleep(0.05)
    go.touch()
    results = [json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children]
    total = share * processes
    elapsed = max(r["elapsed"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    per_commit = total / max(1, sum(r["commits"] for r in results))
    print(
        f"{processes} process(es) x {args.threads} threads: {total / elapsed:6.0f} msg/s   "
        f"CPU {cpu * 1000 / total:5.1f} ms/message   {per_commit:4.1f} messages/commit",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, start, count, threads, run_id, go = sys.argv[2:8]
        child(url, int(start), int(count), int(threads), run_id, Path(go))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=8, help="delivering threads per process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--database-url", default=None, help="PostgreSQL base URL (default: SQLite files)")
    parser.add_argument("--wal", action="store_true", help="SQLite: the WAL frames per message, by table and index")
    parser.add_argument("--top", type=int, default=15, help="with --wal: how many tables and indexes to list")
    parser.add_argument("--compare-known", action="store_true", help="CPU/message with the KnownRows hint off and on")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare-known: rounds of off and on")
    args = parser.parse_args()
    if args.compare_known:
        compare_known(args)
        return
    if args.wal:
        if args.database_url:
            parser.error("--wal measures SQLite's write-ahead log; leave out --database-url")
        with tempfile.TemporaryDirectory() as tmp:
            wal_by_btree(args, Path(tmp))
        return
    print(f"{args.messages} messages per run, converted before the clock starts; {os.cpu_count()} CPUs", flush=True)
    for processes in args.processes:
        run_id = f"sw{os.getpid()}p{processes}-"
        with tempfile.TemporaryDirectory() as tmp:
            context = (
                postgres_schema(args.database_url) if args.database_url else nullcontext(f"sqlite:///{tmp}/store.db")
            )
            with context as url:
                run(url, processes, args, run_id, Path(tmp))


if __name__ == "__main__":
    main()
