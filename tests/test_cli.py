"""The hl7gw command as a user runs it: exit codes, warnings, and output into a closed pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from tests.support.gateway_process import GatewayProcess, clean_env


def hl7gw(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, timeout=120, env=clean_env(**env)
    )


def test_a_bad_log_level_fails_like_every_bad_value(tmp_path: Path) -> None:
    result = hl7gw("dlq", "list", HL7GW_DATA_DIR=str(tmp_path), HL7GW_LOG_LEVEL="VERBOSE")
    assert result.returncode == 2
    assert b"HL7GW_LOG_LEVEL" in result.stderr and b"Traceback" not in result.stderr


def test_a_misspelt_variable_is_warned_about(tmp_path: Path) -> None:
    result = hl7gw("dlq", "list", HL7GW_DATA_DIR=str(tmp_path), HL7GW_DATA_DRI="/elsewhere")
    assert result.returncode == 0, result.stderr
    assert b"HL7GW_DATA_DRI is not an hl7gw setting (did you mean HL7GW_DATA_DIR?)" in result.stderr


def test_output_into_a_closed_pipe_is_not_an_error() -> None:
    # `hl7gw convert big.hl7 | head -1`: the reader leaves after one line.
    files = " ".join([str(SAMPLES / "v2-to-fhir-ig" / "ORU_R01.hl7")] * 10)  # far more than a pipe holds
    command = f"{sys.executable} -m gateway.cli convert {files} | head -c 10"
    result = subprocess.run(command, shell=True, capture_output=True, timeout=120, env=clean_env(), check=False)
    assert result.stdout == b'{\n  "resou'
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr, result.stderr.decode()


@pytest.mark.slow
def test_ready_comes_after_every_part_says_it_serves(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data")
    gateway.env.update(HL7GW_LOG_LEVEL="INFO", HL7GW_WORKER_PROCESSES="2")
    gateway.start()
    try:
        log = gateway.log_path.read_text()
    finally:
        gateway.stop()
    ready = log.index("hl7gw: ready")
    assert "FHIR API listening on http://127.0.0.1:" in log[:ready]
    assert "MLLP listening on 127.0.0.1:" in log[:ready]
    assert log[:ready].count("gateway.services.worker: worker started") == 2
    for child in ("api ready", "mllp ready", "worker-0 ready", "worker-1 ready"):
        assert child in log[:ready]
