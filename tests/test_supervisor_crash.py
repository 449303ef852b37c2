"""A real ``hl7gw run`` whose processes die (issue 23.6): a worker killed with messages in flight has
them given back by the supervisor at once, not after the heartbeat timeout (15 s), and each is
stored once; a supervisor killed with ``kill -9`` leaves no process of its tree behind.

One gateway for both (its start is most of the time), the supervisor's death last.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chaos import Chaos

#: The heartbeat timeout is 15 s: well under it means the supervisor gave the messages back.
GIVEN_BACK_WITHIN_S = 5.0
#: Every child exits within ORPHAN_GRACE_S (1 s) of its supervisor's death; some margin for a busy machine.
TREE_GONE_WITHIN_S = 3.0


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    run = Chaos(tmp_path_factory.mktemp("crash"), rate=20.0, connections=2, log=lambda line: None)
    run.gateway.env["HL7GW_WORKER_PROCESSES"] = "2"
    try:
        run.start(warmup_s=1.0)
        yield run
    finally:
        run.close()


def test_a_dead_workers_messages_are_processed_at_once_and_once(chaos: Chaos) -> None:
    held = _hold_messages(chaos)
    killed = time.monotonic()
    chaos.kill_worker()  # kill -9 the worker holding them; the other goes on
    caught_up = chaos.wait_caught_up(killed, timeout=30) - killed
    assert caught_up < GIVEN_BACK_WITHIN_S, f"{held} held message(s) stored {caught_up:.1f} s after the kill"
    assert "gave back" in chaos.gateway.log()
    chaos.sender.stop()
    chaos.wait_caught_up(time.monotonic(), timeout=60)
    report = chaos.check()
    assert report.lost == [] and report.duplicate_envelopes == []
    assert report.applied_twice == []
    assert report.processed_once == report.acknowledged > 0


def test_b_kill_9_of_the_supervisor_leaves_no_process(chaos: Chaos) -> None:
    gateway = chaos.gateway
    with gateway.client() as client:  # an audited read: the API's audit writer (a grandchild) runs
        assert client.get("/fhir/Patient", params={"identifier": "CH0N1"}).status_code == 200
    tree = {pid: _started(pid) for pid in gateway.descendants()}
    commands = [_command(pid) for pid in tree]
    assert any(b"redis-server" in c for c in commands)
    assert sum(b"gateway.cli\x00worker" in c for c in commands) == 2
    assert any(b"gateway.cli\x00api" in c for c in commands) and any(b"gateway.cli\x00mllp" in c for c in commands)
    assert any(b"forkserver" in c for c in commands)
    assert gateway.process is not None
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait(10)
    deadline = time.monotonic() + TREE_GONE_WITHIN_S
    left = dict(tree)
    while left and time.monotonic() < deadline:
        left = {pid: start for pid, start in left.items() if _running(pid, start)}
        time.sleep(0.05)
    try:
        assert left == {}, f"still running {TREE_GONE_WITHIN_S} s after the supervisor died: {_names(left)}"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def _hold_messages(chaos: Chaos) -> int:
    """Make one worker hold messages, frozen (SIGSTOP) while it does: every worker stopped while a
    backlog builds, then the first one let go until it fetched some of it. Returns how many it holds."""
    victim, *others = chaos._pids("gateway.cli\x00worker")
    for pid in (victim, *others):
        os.kill(pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(victim, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while chaos.in_flight() == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(victim, signal.SIGSTOP)
    chaos._victim, chaos._others = victim, others
    held = chaos.in_flight()
    assert held > 0, "the worker held no message"
    return held


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _started(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if fields else ""  # starttime: a new process on a reused pid differs


def _running(pid: int, started: str) -> bool:
    """Still that process, and not a zombie (an exited orphan that init has not reaped yet)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _names(pids: dict[int, str]) -> list[str]:
    return [f"{pid} {_command(pid)[:80].decode(errors='replace')}" for pid in pids]
