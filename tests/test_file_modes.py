"""Patient data is private to the gateway's user (issue 23): directories 0700 and files 0600 under
any umask; a data dir open to others is named in one warning. And waits for a child to exit
cannot fail on a stepped clock (issue 22)."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.filemodes import prepare_data_dir
from gateway.procutil import wait_exit
from tests.support.gateway_process import GatewayProcess
from tests.support.mllp import adt, send_raw


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files would be created 0644 and directories 0755."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included) -> its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_a_new_data_dir_and_everything_in_it_are_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    gateway = GatewayProcess(data).start(create_data_dir=False)
    try:
        ack = send_raw(adt("MODES-1"), gateway.mllp_port)
        assert str(ack.segment("MSA")[1]) == "AA"
        gateway.wait_for("/fhir/Patient?identifier=MODES-1", lambda b: b.get("total", 0) == 1, timeout=20)
        found = modes(data)
    finally:
        assert gateway.stop() == 0
    # The files that hold patient data are there (the AOF's name differs between Redis versions).
    assert {"hl7gw.sqlite3", "hl7gw.sqlite3-wal", "admin.token", "redis", "metrics"} <= set(found), sorted(found)
    assert any("appendonly" in name for name in found), sorted(found)
    kinds = {name: (data / name).is_dir() for name in found if not (data / name).is_symlink()}
    wide_dirs = {name: oct(found[name]) for name, is_dir in kinds.items() if is_dir and found[name] != 0o700}
    wide_files = {name: oct(found[name]) for name, is_dir in kinds.items() if not is_dir and found[name] != 0o600}
    assert wide_dirs == {} and wide_files == {}, (wide_dirs, wide_files)
    assert "group or others may read" not in gateway.log()
    # Stopped cleanly: what the AOF and the database hold after the stop is still private.
    assert all(mode & 0o077 == 0 for mode in modes(data).values())


def test_an_existing_data_dir_open_to_others_gets_one_warning_and_is_left_alone(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    with caplog.at_level(logging.WARNING, logger="gateway.filemodes"):
        prepare_data_dir(data)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(data.resolve()) in warnings[0] and "mode 0755" in warnings[0]
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # the operator's choice, not changed behind their back


def test_a_private_data_dir_gets_no_warning_and_a_new_one_is_created_0700(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = tmp_path / "a" / "data"
    with caplog.at_level(logging.WARNING, logger="gateway.filemodes"):
        prepare_data_dir(fresh)
        prepare_data_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert caplog.records == []


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("timeout", [-3600.0, -1e-9, 0.0, float("nan"), float("-inf")])
def test_waiting_for_a_child_with_no_time_left_answers_at_once(
    sleeper: subprocess.Popen[bytes], timeout: float
) -> None:
    # What a deadline on a clock stepped backwards or forwards computes: no error, no hang.
    started = time.monotonic()
    assert wait_exit(sleeper, timeout) is False
    assert time.monotonic() - started < 1.0
    assert sleeper.returncode is None


def test_waiting_for_a_child_reaps_it_once_it_exits(sleeper: subprocess.Popen[bytes]) -> None:
    sleeper.terminate()
    assert wait_exit(sleeper, 1e12) is True  # a huge timeout is clamped, not an OverflowError
    assert sleeper.returncode == -15
    assert wait_exit(sleeper, -1.0) is True  # reaped already: answered from its return code
