"""Multiprocess mode as ``hl7gw run`` uses it: children count into files of their own in one
directory, /metrics adds them up, and a dead child's live gauges leave the sum while its counters stay."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics.exposition import MULTIPROC_DIR, child_died, fresh_multiproc_dir

CHILD = textwrap.dedent(
    """
    import sys
    from gateway.metrics import Recorder
    recorder = Recorder()
    recorder.received("LAB|HOSP", "ADT^A01")
    recorder.connections_open(int(sys.argv[1]))
    print("ok", flush=True)
    sys.stdin.read()  # alive until the test closes stdin
    """
)


def totals(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


def test_children_add_up_and_a_dead_child_leaves_the_live_gauges(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "stale.db").write_bytes(b"from an earlier run")
    directory = fresh_multiproc_dir(tmp_path)
    assert list(directory.iterdir()) == []  # wiped at start
    env = {**os.environ, MULTIPROC_DIR: str(directory)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(open_connections)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for open_connections in (2, 3)
    ]
    for child in children:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
    received = ("hl7gw_messages_received_total", (("message_type", "ADT^A01"), ("sender", "LAB|HOSP")))
    connections = ("hl7gw_mllp_connections_open", ())

    found = totals(directory)
    assert found[received] == 2 and found[connections] == 5

    first = children[0]
    assert first.stdin is not None
    first.stdin.close()
    first.wait(30)
    child_died(first.pid, directory)  # what the supervisor does before restarting it
    found = totals(directory)
    assert found[received] == 2  # what it counted stays counted
    assert found[connections] == 3  # what it held open does not

    for child in children[1:]:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    for child in children:
        assert child.stdout is not None
        child.stdout.close()
