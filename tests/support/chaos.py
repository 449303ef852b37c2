"""Chaos runs: ``hl7gw run`` under a steady stream of distinct messages while its parts are killed
or stopped in turn, then a count of what became of every acknowledged message.

Used by tests/test_chaos.py (CI) and benchmarks/chaos.py (longer runs, other settings). A run:

1. starts the gateway (embedded Redis; SQLite, or a private PostgreSQL server it can stop), and a
   sender that streams ADT^A04 messages over several MLLP connections, one unacknowledged message
   per connection, each with its own MSH-10 and patient identifier. Like a real sender it resends a
   message until it is accepted: after a lost connection, a timeout, or an AR/CR (not stored);
2. applies each fault, waits until everything acknowledged before the fault ended is processed,
   and records how long the intake and the pipeline took to recover;
3. stops the sender, waits for the rest, and checks every acknowledged message: one archive row,
   processed (its Patient stored, version 1: applied once) or an open dead letter; nothing in
   dramatiq's ``.XQ``, no dead letter left parked in Redis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis
from sqlalchemy import select

from gateway.db.engine import make_engine
from gateway.db.schema import dead_letter, fhir_resource, message_archive
from gateway.keys import Keys
from gateway.mllp.framing import FrameDecoder, encode_frame
from gateway.services.embedded_redis import PASSWORD_FILE, free_port
from tests.support.gateway_process import GatewayProcess

SENDER = "CHAOS|HOSP"


def adt_a04(connection: int, number: int) -> tuple[str, str, bytes]:
    """(MSH-10, patient identifier, message): each message makes a Patient of its own."""
    control_id, mrn = f"C{connection}-{number}", f"CH{connection}N{number}"
    raw = (
        f"MSH|^~\\&|CHAOS|HOSP|GW|GW|20240501120000||ADT^A04^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A04|20240501120000\r"
        f"PID|1||{mrn}^^^HOSP^MR||Chaos{number}^Pat||19800101|F\r"
    ).encode()
    return control_id, mrn, raw


class Sender(threading.Thread):
    """Streams messages at ``rate`` msg/s over ``connections`` connections until stopped."""

    def __init__(self, port: int, *, connections: int = 4, rate: float = 40.0):
        super().__init__(name="chaos-sender", daemon=True)
        self.port = port
        self.connections = connections
        self.interval = connections / rate
        #: MSH-10 -> (patient identifier, monotonic time of its ACK).
        self.acked: dict[str, tuple[str, float]] = {}
        self.answers: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)

    def acked_before(self, moment: float) -> set[str]:
        with self.lock:
            return {c for c, (_, at) in self.acked.items() if at <= moment}

    def first_ack_after(self, moment: float) -> float | None:
        with self.lock:
            times = [at for _, at in self.acked.values() if at > moment]
        return min(times) if times else None

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time between acknowledgements from ``start`` to ``end``."""
        with self.lock:
            times = sorted(at for _, at in self.acked.values() if start < at < end)
        marks = [start, *times, end]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        await asyncio.gather(*(self._connection(n) for n in range(self.connections)))

    async def _connection(self, n: int) -> None:
        number = 0
        pending: tuple[str, str, bytes] | None = None
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        while not self._stop_event.is_set():
            if pending is None:
                number += 1
                pending = adt_a04(n, number)
            control_id, mrn, raw = pending
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                assert reader is not None and writer is not None
                writer.write(encode_frame(raw))
                await writer.drain()
                code = await asyncio.wait_for(_read_ack_code(reader), 30)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError):
                self.answers["connection lost"] += 1
                if writer is not None:
                    writer.close()
                writer = reader = None
                await asyncio.sleep(0.2)
                continue
            self.answers[code] += 1
            if code in ("AA", "CA"):
                with self.lock:
                    self.acked[control_id] = (mrn, time.monotonic())
                pending = None
                await asyncio.sleep(self.interval)
            else:  # AR/CR 207: not stored; a sender tries again a little later
                await asyncio.sleep(0.2)
        if writer is not None:
            writer.close()


async def _read_ack_code(reader: asyncio.StreamReader) -> str:
    decoder = FrameDecoder()
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed")
        frames = decoder.feed(data)
        if frames:
            msa = next(s for s in frames[0].split(b"\r") if s.startswith(b"MSA")).split(b"|")
            return msa[1].decode()


class PrivatePostgres:
    """A PostgreSQL server of the run's own (Debian's binaries), so that it can be stopped. Its
    files are in a new directory under the system's temporary directory (as root the server runs
    as the postgres user, who may not enter a test's own temporary directory); ``remove`` deletes it."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hl7gw-postgres-"))
        self.port = free_port()
        self.bin = _postgres_bin()
        self.root = os.geteuid() == 0

    @staticmethod
    def available() -> bool:
        return _postgres_bin() is not None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        assert self.bin is not None
        command = [str(self.bin / args[0]), *args[1:]]
        if self.root:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        if self.root:
            shutil.chown(self.directory, "postgres")
        os.chmod(self.directory, 0o700)
        self._run("initdb", "-D", str(self.directory / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self.start()

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        data, log = str(self.directory / "data"), str(self.directory / "log")
        self._run("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its files."""
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


def _postgres_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


@dataclass
class Recovery:
    fault: str
    seconds: float
    #: The longest time without an acknowledgement, from the fault's start until caught up.
    intake_gap_s: float
    #: From the fault's end until everything acknowledged before that was processed.
    caught_up_s: float
    #: Messages in flight in workers when the fault struck (for a worker's death: what it held).
    in_flight: int = 0


@dataclass
class Report:
    acknowledged: int = 0
    processed_once: int = 0
    dead_letters: int = 0
    lost: list[str] = field(default_factory=list)
    applied_twice: list[str] = field(default_factory=list)
    duplicate_envelopes: list[str] = field(default_factory=list)
    reprocessed: int = 0
    in_xq: int = 0
    parked: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    recoveries: list[Recovery] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{'fault':38} {'length':>7} {'in flight':>9} {'no ACK for':>11} {'caught up':>10}"]
        for r in self.recoveries:
            out.append(
                f"{r.fault:38} {r.seconds:>5.0f} s {r.in_flight:>9} {r.intake_gap_s:>9.1f} s {r.caught_up_s:>8.1f} s"
            )
        out.append(
            f"acknowledged {self.acknowledged}, stored once {self.processed_once}, open dead letters "
            f"{self.dead_letters}, lost {len(self.lost)}, applied twice {len(self.applied_twice)}, "
            f"two envelopes {len(self.duplicate_envelopes)}, in .XQ {self.in_xq}, parked letters {self.parked}"
        )
        out.append(f"processed more than once (idempotent): {self.reprocessed}; answers: {self.answers}")
        return out


class Chaos:
    """One gateway, one sender, faults in turn (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        *,
        postgres: PrivatePostgres | None = None,
        rate: float = 40.0,
        connections: int = 4,
        log: Callable[[str], None] = print,
    ):
        self.workdir = workdir
        self.postgres = postgres
        self.log = log
        self.gateway = GatewayProcess(workdir / "data")
        if postgres is not None:
            self.gateway.env["HL7GW_DATABASE_URL"] = postgres.url
        self.database_url = postgres.url if postgres else f"sqlite:///{workdir / 'data' / 'hl7gw.sqlite3'}"
        self.sender = Sender(self.gateway.mllp_port, connections=connections, rate=rate)
        self.recoveries: list[Recovery] = []
        self.engine = make_engine(self.database_url)
        #: The worker fill_one_worker filled, and the ones it left stopped.
        self._victim: int | None = None
        self._others: list[int] = []

    # -- the run ------------------------------------------------------------------------------
    def start(self, warmup_s: float = 5.0) -> None:
        self.gateway.start()
        self.sender.start()
        time.sleep(warmup_s)
        self.wait_caught_up(time.monotonic(), timeout=120)

    def fault(self, name: str, apply: Callable[[], float], prepare: Callable[[], None] | None = None) -> Recovery:
        """Apply a fault (``apply`` returns how long it lasted), then wait for the gateway to catch up."""
        self.log(f"chaos: {name} ...")
        if prepare is not None:
            prepare()
        held = self.in_flight()
        started = time.monotonic()
        seconds = apply()
        ended = time.monotonic()
        caught_up = self.wait_caught_up(ended)
        accepting = self.wait_accepting(ended)
        gap = self.sender.longest_gap(started, max(caught_up, accepting))
        recovery = Recovery(name, seconds, gap, caught_up - ended, held)
        self.recoveries.append(recovery)
        self.log(
            f"chaos: {name}: {held} in flight, no ACK for {gap:.1f} s, caught up {recovery.caught_up_s:.1f} s after"
        )
        time.sleep(3)  # some normal traffic between faults
        return recovery

    def finish(self) -> Report:
        self.sender.stop()
        self.wait_caught_up(time.monotonic(), timeout=300)
        report = self.check()
        self.gateway.stop()
        self.engine.dispose()
        return report

    def close(self) -> None:
        """After a failure: stop everything that may still run."""
        if self.sender.is_alive():
            self.sender.stop()
        if self.gateway.process is not None and self.gateway.process.poll() is None:
            self.gateway.kill_tree()
        self.engine.dispose()

    def wait_caught_up(self, moment: float, timeout: float = 240.0) -> float:
        """Until every message acknowledged before ``moment`` left the "received" state."""
        wanted = self.sender.acked_before(moment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done = self._handled_control_ids()
            except Exception:  # noqa: BLE001 - the database may be the fault right now
                done = set()
            if wanted <= done:
                return time.monotonic()
            time.sleep(0.5)
        missing = sorted(wanted - self._handled_control_ids())
        raise AssertionError(f"{len(missing)} acknowledged message(s) not processed in {timeout:.0f} s: {missing[:10]}")

    def wait_accepting(self, moment: float, timeout: float = 120.0) -> float:
        """Until the sender got an acknowledgement after ``moment``: the intake takes messages again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.sender.first_ack_after(moment)
            if first is not None:
                return first
            time.sleep(0.05)
        raise AssertionError(f"no message accepted in the {timeout:.0f} s after the fault")

    def _handled_control_ids(self) -> set[str]:
        table = message_archive
        query = select(table.c.control_id).where(table.c.sender == SENDER, table.c.status != "received")
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(query)}

    # -- faults -----------------------------------------------------------------------------------
    def fill_one_worker(self, seconds: float = 5.0) -> None:
        """Make one worker hold messages: every worker stopped while a backlog builds, then only the
        first one let go for a moment, so that it fetches its fill of the backlog."""
        self._victim, *self._others = self._pids("gateway.cli\x00worker")
        for pid in (self._victim, *self._others):
            os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(self._victim, signal.SIGCONT)
        time.sleep(0.3)

    def kill_worker(self) -> float:
        """kill -9 the worker ``fill_one_worker`` filled (else the first one), and let the others go on."""
        victim = self._victim or self._pids("gateway.cli\x00worker")[0]
        os.kill(victim, signal.SIGKILL)
        for pid in self._others:
            os.kill(pid, signal.SIGCONT)
        self._victim, self._others = None, []
        return 0.0

    def kill_listener(self) -> float:
        os.kill(self._pids("gateway.cli\x00mllp")[0], signal.SIGKILL)
        return 0.0

    def kill_redis(self) -> float:
        os.kill(self._pids("redis-server")[0], signal.SIGKILL)  # hl7gw run restarts it from its AOF
        return 0.0

    def redis_down(self, seconds: float) -> float:
        """Redis gone (connections refused) for ``seconds``: killed while hl7gw run is stopped, so
        that it is restarted only when hl7gw run goes on."""
        assert self.gateway.process is not None
        supervisor = self.gateway.process.pid
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(self._pids("redis-server")[0], signal.SIGKILL)
            time.sleep(seconds)
        finally:
            os.kill(supervisor, signal.SIGCONT)
        return seconds

    def stop_redis(self, seconds: float) -> float:
        """A Redis that hangs (SIGSTOP): clients time out instead of being refused."""
        (pid,) = self._pids("redis-server")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return seconds

    def database_down(self, seconds: float) -> float:
        """PostgreSQL: the server stopped (fast shutdown: connections terminated) and started again.
        SQLite: another process holds the write lock, as a backup tool or a sqlite3 shell would."""
        with self._database_unavailable():
            time.sleep(seconds)
        return seconds

    def kill_tree(self) -> float:
        """Everything at once, as a power cut would; then ``hl7gw run`` again on the same data."""
        self.gateway.kill_tree()
        started = time.monotonic()
        self.gateway.start()
        return time.monotonic() - started

    @contextmanager
    def _database_unavailable(self) -> Iterator[None]:
        if self.postgres is not None:
            self.postgres.stop("fast")
            try:
                yield
            finally:
                self.postgres.start()
            return
        locker = sqlite3.connect(self.workdir / "data" / "hl7gw.sqlite3", timeout=60)
        locker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            locker.rollback()
            locker.close()

    def _pids(self, marker: str) -> list[int]:
        found = []
        for pid in self.gateway.descendants():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        if not found:
            raise AssertionError(f"no process {marker!r} under the gateway")
        return found

    # -- the count --------------------------------------------------------------------------------
    def check(self) -> Report:
        report = Report(answers=dict(self.sender.answers), recoveries=list(self.recoveries))
        acked = dict(self.sender.acked)
        report.acknowledged = len(acked)
        table = message_archive
        envelopes: dict[str, list[tuple[str, str, int]]] = {}
        with self.engine.connect() as conn:
            columns = (table.c.control_id, table.c.id, table.c.status, table.c.attempts)
            query = select(*columns).where(table.c.sender == SENDER)
            for control_id, envelope_id, status, attempts in conn.execute(query):
                envelopes.setdefault(control_id, []).append((envelope_id, status, attempts))
            letters = {row[0]: row[1] for row in conn.execute(select(dead_letter.c.envelope_id, dead_letter.c.status))}
            versions = {}
            for content, version in conn.execute(
                select(fhir_resource.c.content, fhir_resource.c.version_id).where(fhir_resource.c.type == "Patient")
            ):
                for identifier in orjson.loads(content).get("identifier", []):
                    versions[identifier.get("value")] = version
        for control_id, (mrn, _) in sorted(acked.items()):
            rows = envelopes.get(control_id, [])
            if len(rows) != 1:
                (report.lost if not rows else report.duplicate_envelopes).append(control_id)
                continue
            envelope_id, status, attempts = rows[0]
            report.reprocessed += attempts > 1
            if status == "processed" and mrn in versions:
                if versions[mrn] == 1:
                    report.processed_once += 1
                else:
                    report.applied_twice.append(control_id)
            elif status == "failed" and letters.get(envelope_id) == "open":
                report.dead_letters += 1
            else:
                report.lost.append(control_id)
        report.in_xq, report.parked = self._redis_leftovers()
        return report

    def in_flight(self) -> int:
        """Messages fetched by workers and not yet acknowledged to the queue."""
        with self._redis() as (client, keys):
            return sum(int(client.scard(key)) for key in client.scan_iter(match=f"{keys.acks_prefix()}*"))

    def _redis_leftovers(self) -> tuple[int, int]:
        """Messages in dramatiq's dead-letter sets and dead letters parked in Redis."""
        with self._redis() as (client, keys):
            in_xq = sum(int(client.zcard(key)) for key in client.scan_iter(match=f"{keys.namespace}:*.XQ"))
            return in_xq, int(client.hlen(keys.parked_letters()))

    @contextmanager
    def _redis(self) -> Iterator[tuple[redis.Redis, Keys]]:
        """A client of the embedded Redis (its port is in the redis.conf hl7gw run wrote, its password
        in redis.password beside it)."""
        directory = self.workdir / "data" / "redis"
        conf = (directory / "redis.conf").read_text()
        port = next(line.split()[1] for line in conf.splitlines() if line.startswith("port "))
        password = (directory / PASSWORD_FILE).read_text().strip()
        client = redis.Redis(host="127.0.0.1", port=int(port), password=password, socket_timeout=10)
        try:
            yield client, Keys(self.gateway.env.get("HL7GW_REDIS_NAMESPACE", "hl7gw"))
        finally:
            client.close()


def every_fault(chaos: Chaos, outage_s: float) -> Report:
    """The sequence of issue 12: a worker (while it holds messages: see ``fill_one_worker``), the
    listener, the embedded Redis (killed and restarted at once, down for ``outage_s``, hung for
    ``outage_s``), the database (down for ``outage_s``), the whole tree; then the count."""
    chaos.start()
    chaos.fault("kill -9 a worker holding messages", chaos.kill_worker, prepare=chaos.fill_one_worker)
    chaos.fault("kill -9 the MLLP listener", chaos.kill_listener)
    chaos.fault("kill -9 the embedded Redis", chaos.kill_redis)
    chaos.fault(f"Redis down {outage_s:.0f} s", lambda: chaos.redis_down(outage_s))
    chaos.fault(f"Redis hung (SIGSTOP) {outage_s:.0f} s", lambda: chaos.stop_redis(outage_s))
    chaos.fault(f"database down {outage_s:.0f} s", lambda: chaos.database_down(outage_s))
    chaos.fault("kill -9 the whole tree", chaos.kill_tree)
    return chaos.finish()
