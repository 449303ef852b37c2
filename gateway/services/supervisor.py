"""``hl7gw run``: one supervisor that starts every part, restarts what dies, and stops in order.

Start: embedded Redis (unless HL7GW_REDIS_URL is set), schema, admin token, then the worker, API
and MLLP listener as child processes, and the watched inbox when HL7GW_INBOX_DIR is set. Stop
(SIGTERM or Ctrl-C): intake first (the inbox, then the listener), so nothing new is acknowledged;
then the workers drain; then the API; the embedded Redis last.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from gateway.api.auth import ensure_admin_token
from gateway.config import Settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.errors import ConfigError, describe
from gateway.filemodes import prepare_data_dir
from gateway.keys import IMPORT_QUEUE, QUEUE, REPLAY_QUEUE
from gateway.metrics.exposition import MULTIPROC_DIR, child_died, fresh_multiproc_dir
from gateway.procutil import CONSUMER_PREFIX, PROCESS_NAME, READY_FD, SUPERVISOR_FD, die_with_parent, wait_exit
from gateway.queue.broker import GatewayBroker, forget_all_workers, give_back, make_broker
from gateway.queue.durability import require_durable
from gateway.services.disk_watch import DiskWatch
from gateway.services.embedded_redis import EmbeddedRedis, free_port
from gateway.services.outages import until_available

log = logging.getLogger(__name__)

#: Order in which children are stopped; started in reverse.
STOP_ORDER = ("inbox", "mllp", "worker", "api")
RESTART_BACKOFF_S = 2.0
MAX_RESTART_BACKOFF_S = 30.0


@dataclass
class Child:
    role: str
    index: int = 0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0
    stopping: bool = field(default=False)
    #: Read end of the pipe the child writes to once it serves (gateway/procutil.py).
    ready_fd: int | None = None
    ready: bool = False
    #: A worker's consumer identities start with this (new at every start; gateway/queue/broker.py).
    consumer_prefix: str = ""

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}" if self.role == "worker" else self.role


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.env: dict[str, str] = {}
        self._stop_requested = False
        # Children read end-of-file from this pipe when we are gone, however we died; only we
        # hold the write end (gateway/procutil.py exit_with_supervisor).
        self._alive_read, self._alive_write = os.pipe()
        self._broker: GatewayBroker | None = None
        self.disk = DiskWatch(settings.storage.data_dir)
        self._redis_retry_at = 0.0
        self._redis_failures = 0

    # -- start -----------------------------------------------------------------------------
    def prepare(self) -> None:
        s = self.settings
        prepare_data_dir(s.storage.data_dir)
        self._lock = _lock_data_dir(s.storage.data_dir)
        if s.storage.embedded_redis:
            self.redis = EmbeddedRedis(s.storage.data_dir / "redis")
            redis_url = self.redis.start()
            # Nothing else can be connected to a Redis we just started: whatever a previous run
            # had in flight goes straight back on the queue instead of waiting for a heartbeat.
            forget_all_workers(redis_url, s.storage.redis_namespace)
        else:
            assert s.storage.redis_url is not None
            redis_url = s.storage.redis_url
        # Nothing is acknowledged on a Redis that can lose it (unless allowed): a plain start-up
        # failure here; a Redis that changes later is refused by the listener's intake.
        require_durable(redis_url, s.storage.allow_volatile_redis)
        engine = make_engine(s.storage.database_url)
        try:
            until_available("database", lambda: migrate(engine), max_backoff_s=s.worker.outage_max_backoff_s)
        finally:
            engine.dispose()
        mllp_port = s.mllp.port or free_port(s.mllp.host)
        http_port = s.api.port or free_port(s.api.host)
        self.mllp_port, self.http_port = mllp_port, http_port
        # Every child writes its metrics' values here; the API's /metrics reads them all.
        self.metrics_dir = fresh_multiproc_dir(s.storage.data_dir.resolve())
        self.env = {
            **os.environ,
            "HL7GW_DATA_DIR": str(s.storage.data_dir.resolve()),
            "HL7GW_REDIS_URL": redis_url,
            "HL7GW_DATABASE_URL": s.storage.database_url,
            "HL7GW_MLLP_PORT": str(mllp_port),
            "HL7GW_HTTP_PORT": str(http_port),
            MULTIPROC_DIR: str(self.metrics_dir),
        }
        token_file = ensure_admin_token(s)
        if token_file is not None:
            print(f"hl7gw: admin API token is in {token_file.resolve()}", flush=True)
        self.children = [Child("api"), *(Child("worker", i) for i in range(s.worker.processes)), Child("mllp")]
        if s.inbox.directory is not None:  # the watched inbox (gateway/services/inbox.py)
            self.children.append(Child("inbox"))

    def _spawn(self, child: Child) -> None:
        if child.ready_fd is not None:
            os.close(child.ready_fd)
        child.ready_fd, write_end = os.pipe()
        child.ready = False
        env = {**self.env, READY_FD: str(write_end), PROCESS_NAME: child.name, SUPERVISOR_FD: str(self._alive_read)}
        if child.role == "worker":
            child.consumer_prefix = f"{child.name}-{uuid.uuid4().hex[:16]}"
            env[CONSUMER_PREFIX] = child.consumer_prefix
        try:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", child.role],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_end, self._alive_read),
                # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(write_end)
        child.last_start = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def start(self) -> None:
        self.prepare()
        for child in self.children:
            self._spawn(child)
        self._wait_ready()
        s = self.settings
        print(
            f"hl7gw: ready: MLLP on {s.mllp.host}:{self.mllp_port}, "
            f"FHIR API on http://{s.api.host}:{self.http_port}/fhir",
            flush=True,
        )

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Until every child said it serves: the listener listens, the API answers, and every
        worker consumes (so a message acknowledged after "ready" is processed at once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = {c.ready_fd: c for c in self.children if not c.ready and c.ready_fd is not None}
            if not pending and all(c.ready for c in self.children):
                return
            readable = select.select(list(pending), [], [], 0.2)[0] if pending else []
            for fd in readable:
                child = pending[fd]
                child.ready = bool(os.read(fd, 64))  # empty: it exited first, and is restarted
                os.close(fd)
                child.ready_fd = None
                if child.ready:
                    log.info("%s ready", child.name)
            self._reap()
            if not pending:
                time.sleep(0.1)
        waiting = ", ".join(sorted(c.name for c in self.children if not c.ready))
        log.warning("not ready after %.0fs (%s); still waiting in the background", timeout, waiting)

    # -- run -------------------------------------------------------------------------------
    def _reap(self) -> None:
        """Restart any child that exited while we were not stopping it, the embedded Redis first."""
        self.disk.poll()
        self._keep_redis_up()
        for child in self.children:
            proc = child.process
            if proc is None or child.stopping or proc.poll() is None:
                continue
            log.error("%s exited with code %s; restarting", child.name, proc.returncode)
            child_died(proc.pid, self.metrics_dir)
            if child.role == "worker":
                self._give_back(child, proc.pid)
            if time.monotonic() - child.last_start < RESTART_BACKOFF_S:
                time.sleep(RESTART_BACKOFF_S)
            child.restarts += 1
            self._spawn(child)

    def _give_back(self, child: Child, pid: int) -> None:
        """Put the messages a dead worker held back on their queues now, not after the heartbeat
        timeout: it is reaped, so nothing can still be working on them (gateway/queue/broker.py)."""
        s = self.settings
        try:
            if self._broker is None:
                self._broker = make_broker(self.env["HL7GW_REDIS_URL"], namespace=s.storage.redis_namespace)
            moved = give_back(self._broker, child.consumer_prefix, worker_queues(s))
        except Exception as exc:  # noqa: BLE001 - a supervisor that crashed would take every child with it
            log.warning(
                "could not give back what %s (pid %d) held (%s): it goes back after the heartbeat timeout",
                child.name,
                pid,
                describe(exc),
            )
            return
        if moved:
            log.warning("gave back %d message(s) %s (pid %d) held", moved, child.name, pid)

    def _keep_redis_up(self) -> None:
        """Start the embedded Redis again when it exited: same port and files, so the AOF replays every
        committed message and the listener and workers reconnect by themselves (until then intake
        answers AR/CR 207). Not while the data dir's disk is full (it would exit at its first write,
        ``appendfsync always``), and a failed start is tried again later: never the end of the run."""
        if self.redis is None or self._stop_requested:
            return
        proc = self.redis.process
        if proc is not None and proc.poll() is None:
            self._redis_failures = 0
            return
        if proc is not None:
            self.redis.process = None
            when = "once the data dir's disk has room" if self.disk.poll(now=True) else f"in {RESTART_BACKOFF_S:g} s"
            log.error("embedded redis-server exited with code %s; restarting it %s", proc.returncode, when)
            self._redis_retry_at = time.monotonic() + RESTART_BACKOFF_S
        if time.monotonic() < self._redis_retry_at or self.disk.poll(now=True):
            return
        try:
            self.redis.start()
        except (ConfigError, OSError, redis.RedisError) as exc:
            self._redis_failures += 1
            delay = min(RESTART_BACKOFF_S * 2**self._redis_failures, MAX_RESTART_BACKOFF_S)
            self._redis_retry_at = time.monotonic() + delay
            # The first failure with redis-server's own words (its log tail); then one line each.
            text = str(exc) if self._redis_failures == 1 else str(exc).splitlines()[0]
            log.error("embedded redis-server did not start (%s); trying again in %.0f s", text, delay)
        else:
            log.warning("embedded redis-server restarted")

    def run_forever(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            self._stop_requested = True

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        try:
            self.start()
            while not self._stop_requested:
                self._reap()
                time.sleep(0.2)
        finally:
            self.stop()

    # -- stop ------------------------------------------------------------------------------
    def stop(self) -> None:
        timeouts = {"inbox": 35.0, "mllp": 35.0, "worker": 75.0, "api": 15.0}
        for role in STOP_ORDER:
            group = [c for c in self.children if c.role == role and c.process is not None]
            for child in group:
                child.stopping = True
                if child.process and child.process.poll() is None:
                    child.process.terminate()
            for child in group:
                assert child.process is not None
                if not wait_exit(child.process, timeouts[role]):
                    log.error("%s did not stop in %.0fs; killing it", child.name, timeouts[role])
                    child.process.kill()
                    child.process.wait()
            if group:
                log.info("stopped %s", role)
        if self._broker is not None:
            self._broker.close()
        if self.redis is not None:
            self.redis.stop()
            log.info("stopped embedded redis")


def worker_queues(settings: Settings) -> list[str]:
    """The queues a worker consumes (gateway/services/worker.py): the pipeline's, the operator jobs',
    the imports', and one per remote sink."""
    return [QUEUE, REPLAY_QUEUE, IMPORT_QUEUE, *(spec.queue for spec in settings.sinks.specs)]


def _lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on the data dir for our lifetime: one gateway per data dir."""
    fd = os.open(data_dir / "hl7gw.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another hl7gw is already running on data dir {data_dir.resolve()}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def run(settings: Settings) -> None:
    Supervisor(settings).run_forever()
