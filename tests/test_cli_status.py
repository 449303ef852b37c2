"""``hl7gw status``: beside a running ``hl7gw run`` (found through its data dir) it says ready, with the
queues (a remote sink's too), the workers and the open dead letters, exit 0; with nothing running,
not ready, exit 1. ``--json`` is one JSON document."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.services.status import _without_password
from tests.conftest import SAMPLES
from tests.support.gateway_process import GatewayProcess, clean_env


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "status", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_status_with_nothing_running_is_not_ready(tmp_path: Path) -> None:
    env = clean_env(HL7GW_DATA_DIR=str(tmp_path / "data"))
    result = status(env)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("hl7gw: NOT READY\n")
    assert "redis      FAILED  no Redis to ask: HL7GW_REDIS_URL is not set" in result.stdout
    assert "no 'hl7gw run' runs on data dir" in result.stdout

    result = status(env, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["status"] == "not ready" and data["queues"] is None
    assert data["checks"]["database"] == {"ok": False, "reason": "the SQLite database file is missing"}


def test_a_redis_password_is_never_shown(tmp_path: Path) -> None:
    env = clean_env(HL7GW_DATA_DIR=str(tmp_path / "data"), HL7GW_REDIS_URL="redis://:s3cr3t@127.0.0.1:1/0")
    for args in ((), ("--json",)):
        result = status(env, *args)
        assert result.returncode == 1
        assert "s3cr3t" not in result.stdout + result.stderr
        assert "Connection refused" in result.stdout
    assert json.loads(result.stdout)["redis"] == "redis://:***@127.0.0.1:1/0 (HL7GW_REDIS_URL)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6380/2", "redis://:***@host:6380/2"),
        ("rediss://user:pw@host/0", "rediss://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redis_urls_lose_their_password(url: str, shown: str) -> None:
    assert _without_password(url) == shown


@pytest.mark.slow
def test_status_beside_a_running_gateway(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data")
    # A remote sink nobody answers at: its message waits in the sink's queue, for its retry.
    gateway.env.update(HL7GW_WORKER_PROCESSES="1", HL7GW_FHIR_SINKS="lab=http://127.0.0.1:1/fhir")
    gateway.start()
    try:
        sent = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "send", "--port", str(gateway.mllp_port)]
            + [str(SAMPLES / "v2-to-fhir-ig" / "ADT_A01.hl7")],
            capture_output=True,
            timeout=60,
            env=gateway.env,
        )
        assert sent.returncode == 0, sent.stdout

        data: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = status(gateway.env, "--json")
            data = json.loads(result.stdout)
            sink = next(q for q in data["queues"] or [] if q["queue"] == "sink.lab")
            if result.returncode == 0 and sink["depth"] + sink["delayed"] >= 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no ready status with the sink's message queued: {data}\n{gateway.log()}")

        assert data["status"] == "ready"
        assert data["redis"].endswith("(embedded)")
        assert data["workers"] == 1
        assert [q["queue"] for q in data["queues"]] == ["hl7", "hl7-replay", "hl7-import", "sink.lab"]
        assert data["dead_letters_open"] == 0

        text = status(gateway.env)
        assert text.returncode == 0, text.stdout
        lines = text.stdout.splitlines()
        assert lines[0] == "hl7gw: ready"
        assert any(line.split()[:2] == ["workers", "ok"] for line in lines)
        header = lines.index(next(line for line in lines if line.startswith("queue ")))
        assert [line.split()[0] for line in lines[header + 1 : header + 5]] == [
            "hl7",
            "hl7-replay",
            "hl7-import",
            "sink.lab",
        ]
        assert all(field.isdigit() for line in lines[header + 1 : header + 5] for field in line.split()[1:4])
        assert "open dead letters: 0" in lines
    finally:
        gateway.stop()
