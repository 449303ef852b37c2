"""Process helpers: children that never outlive the gateway, and tell it when they are ready."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import threading
import time

#: Set by ``hl7gw run`` for each child: the file descriptor to write to once the child is ready.
READY_FD = "HL7GW_READY_FD"
#: Set by ``hl7gw run`` for each child: its name in the logs (mllp, worker-0, api).
PROCESS_NAME = "HL7GW_PROCESS_NAME"
#: Set by ``hl7gw run`` for each child: the read end of a pipe whose write end only the supervisor
#: holds; it reads end-of-file the moment the supervisor is gone, however it died.
SUPERVISOR_FD = "HL7GW_SUPERVISOR_FD"
#: Set by ``hl7gw run`` for each worker: the start of its queue consumer identities (gateway/queue/broker.py),
#: new for every start, so that the supervisor can give back what a dead worker held.
CONSUMER_PREFIX = "HL7GW_CONSUMER_PREFIX"
#: How long a child whose supervisor died may take to stop in order before it exits anyway: what
#: it does not finish is what a crash leaves (acknowledged messages are on disk, in-flight ones go
#: back on the queue), and nothing of the gateway is left running without its supervisor.
ORPHAN_GRACE_S = 1.0

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How much lower an importer runs than the gateway's own processes (an ``os.nice`` increment):
#: beside live traffic, the listener and the workers get the CPU first while it reads and commits
#: a big file (docs/batch.md, Order and fairness: without it, live ACK p99 rose by ~60 ms).
IMPORT_NICENESS = 10
#: The longest single wait for a child to exit (poll() takes an int of milliseconds).
MAX_WAIT_S = 86_400.0


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the parent dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: children are still stopped by the normal shutdown path
        pass


def exit_with_supervisor(grace_s: float = ORPHAN_GRACE_S) -> None:
    """In a child of ``hl7gw run``: when the supervisor is gone (its pipe reads end-of-file), stop
    as on SIGTERM, and exit at once if that took more than ``grace_s``. PR_SET_PDEATHSIG sends the
    SIGTERM already on Linux; the pipe also sees a supervisor that died before the child set it,
    and bounds the orderly stop (a worker's drain may take a minute)."""
    fd = os.environ.pop(SUPERVISOR_FD, None)
    if fd is None or not fd.isdigit():
        return
    os.set_inheritable(int(fd), False)  # not passed on to processes this child starts
    threading.Thread(
        target=_watch_supervisor, args=(int(fd), grace_s), name="hl7gw-supervisor-watch", daemon=True
    ).start()


def _watch_supervisor(fd: int, grace_s: float) -> None:
    while True:
        try:
            if not os.read(fd, 64):  # end-of-file: nothing writes; the supervisor never does
                break
        except InterruptedError:
            continue
        except OSError:
            return  # not a pipe we can read: nothing to watch
    log.error("hl7gw run (the supervisor) is gone: stopping within %.0f s", grace_s)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    log.error("stopping took longer than %.0f s without a supervisor: exiting now", grace_s)
    os._exit(1)


def consumer_prefix() -> str | None:
    """The start of this worker's queue consumer identities when ``hl7gw run`` gave one."""
    return os.environ.get(CONSUMER_PREFIX) or None


def supervised() -> bool:
    """Whether this process is a child of ``hl7gw run``."""
    return READY_FD in os.environ


def signal_ready() -> None:
    """Tell the supervisor (if any) that this child is serving; only the first call writes."""
    fd = os.environ.pop(READY_FD, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"ready\n")
        os.close(int(fd))
    except (OSError, ValueError):
        pass


def process_name(command: str) -> str:
    """This process's name in the logs: the one ``hl7gw run`` gave it, else what ``command`` makes
    it (``run``: the supervisor)."""
    given = os.environ.get(PROCESS_NAME, "")
    return given[:32] if given else ("supervisor" if command == "run" else command)


def yield_cpu(increment: int = IMPORT_NICENESS) -> None:
    """Lower this process's CPU priority by ``increment`` (an importer beside live traffic); a
    system that refuses leaves it as it was."""
    try:
        os.nice(increment)
    except OSError:
        pass


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds (clamped to 0..MAX_WAIT_S) for ``process`` to exit, and reap
    it; True if it exited. The wait is one poll() on a pidfd with a relative timeout, with no
    deadline on any clock: a stepped clock (libfaketime, NTP) cannot make it fail or hang."""
    if process.poll() is not None:  # before pidfd_open: once reaped, its pid may be another's
        return True
    seconds = min(max(0.0, timeout), MAX_WAIT_S) if timeout == timeout else 0.0  # NaN: do not wait
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # reaped already (ESRCH), or no pidfd (not Linux >= 5.3)
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = bool(poller.poll(round(seconds * 1000)))
    finally:
        os.close(pidfd)
    if exited:
        process.wait()  # it is a zombie now: waitpid returns at once
    return exited
