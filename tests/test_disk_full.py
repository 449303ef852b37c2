"""A full data dir disk (issue 22.2): ``hl7gw run`` keeps running, answers AR/CR 207 while nothing can
be stored, says so in its log and its readiness (path, free bytes), and resumes by itself once space is
freed, with every acknowledged message stored exactly once.

Real parts: a tmpfs of the test's own under the data dir, filled with a file; the whole gateway
(embedded Redis with ``appendfsync always``, SQLite), a real MLLP sender (tests/support/chaos.py)."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.config import Settings
from gateway.diskspace import MIN_FREE_BYTES, data_dir_space
from gateway.metrics.value_files import MULTIPROC_DIR, VALUE_FILE_KINDS
from gateway.services import supervisor
from gateway.services.disk_watch import DiskWatch
from gateway.services.embedded_redis import EmbeddedRedis
from gateway.services.status import gather, print_status
from gateway.services.supervisor import Supervisor
from tests.support.chaos import Chaos
from tests.support.gateway_process import clean_env
from tests.support.queue import wait_until
from tests.support.tmpfs import fill, mounted_tmpfs

FULL = re.compile(r"data dir disk full: (\S+) has (\d+) bytes free \(of (\d+)\)")


def test_readiness_status_and_log_name_a_full_data_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with mounted_tmpfs(tmp_path / "data", size_mb=8) as data_dir:
        settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
        watch = DiskWatch(data_dir)
        assert watch.poll(now=True) is False
        assert not data_dir_space(data_dir).full

        filler = fill(data_dir)
        out = io.StringIO()
        print_status(gather(settings, None), out, as_json=False)
        line = next(line for line in out.getvalue().splitlines() if line.strip().startswith("disk"))
        found = FULL.search(line)
        assert "FAILED" in line and found, out.getvalue()
        assert Path(found[1]) == data_dir.resolve() and int(found[2]) < MIN_FREE_BYTES and int(found[3]) > 0

        with caplog.at_level(logging.WARNING, logger="gateway.services.disk_watch"):
            assert watch.poll(now=True) is True
            assert watch.poll(now=True) is True  # said once, not at every look
            filler.unlink()
            assert watch.poll(now=True) is False
        said = [(r.levelname, r.getMessage()) for r in caplog.records]
        assert len(said) == 2, said
        assert said[0][0] == "ERROR" and FULL.match(said[0][1]) and "AR/CR 207" in said[0][1]
        assert said[1][0] == "WARNING" and "has room again" in said[1][1]

        disk = gather(settings, None).readiness.checks["disk"]
        assert disk.ok and disk.reason.startswith(f"{data_dir.resolve()} has ")


#: A process of ``hl7gw run`` (metrics in value files): its catalogue's files are made, then the disk
#: fills, then it records label values it never had (new pages of the files).
RECORD_WHILE_FULL = """
import sys
from pathlib import Path
from gateway.metrics import catalogue
from tests.support.tmpfs import fill
fill(Path(sys.argv[1]))
for n in range(200):  # within the files' first 1 MiB (VALUE_FILE_BYTES)
    catalogue.DUPLICATES.labels(f"SENDER{n}|HOSP").inc()
    catalogue.STAGE_DURATION.labels(f"stage{n}").observe(0.01)
print("recorded")
"""


def test_metrics_value_files_take_no_new_blocks_so_a_full_disk_cannot_kill_with_sigbus(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "data", size_mb=8) as data_dir:
        metrics_dir = data_dir / "metrics"
        metrics_dir.mkdir()
        env = clean_env(**{MULTIPROC_DIR: str(metrics_dir)})
        done = subprocess.run(
            [sys.executable, "-c", RECORD_WHILE_FULL, str(data_dir)], env=env, capture_output=True, timeout=60
        )
        # Sparse files written through mmap on a full disk: SIGBUS (-7) at the first new page.
        assert (done.returncode, done.stdout.strip()) == (0, b"recorded"), done.stderr.decode()[-2000:]
        files = sorted(path.name.rsplit("_", 1)[0] for path in metrics_dir.iterdir())
        assert files == sorted(VALUE_FILE_KINDS)


def test_every_kind_of_value_file_the_catalogue_writes_is_reserved() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from gateway.metrics import catalogue

    kinds = set()
    for metric in vars(catalogue).values():
        if isinstance(metric, Gauge):
            kinds.add(f"gauge_{metric._multiprocess_mode}")
        elif isinstance(metric, Counter):
            kinds.add("counter")
        elif isinstance(metric, Histogram):
            kinds.add("histogram")
    assert kinds and kinds <= set(VALUE_FILE_KINDS)


@pytest.mark.slow
def test_gateway_resumes_by_itself_after_its_disk_was_full(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "data", size_mb=48) as data_dir:
        chaos = Chaos(tmp_path, rate=60.0, log=lambda line: None)
        chaos.gateway.env.update(HL7GW_OUTAGE_MAX_BACKOFF_S="1", HL7GW_WORKER_PROCESSES="1")
        try:
            chaos.start(warmup_s=1.0)
            refused_before = chaos.sender.answers["AR"]
            filler = fill(data_dir)
            # The queue cannot take writes: the listener answers AR 207 (never AA), readiness says why.
            wait_until(lambda: chaos.sender.answers["AR"] > refused_before + 5, timeout=15, what="AR while full")
            with httpx.Client(base_url=chaos.gateway.base_url, timeout=5) as client:
                body = client.get("/health/ready").json()
            assert body["status"] == "not ready"
            assert FULL.match(body["checks"]["disk"]["reason"]), body
            time.sleep(2)  # the sender keeps trying while the disk stays full

            filler.unlink()
            freed = time.monotonic()
            chaos.wait_caught_up(freed, timeout=30)
            chaos.wait_accepting(freed, timeout=30)
            assert chaos.gateway.process is not None and chaos.gateway.process.poll() is None, "hl7gw run exited"
            time.sleep(1)  # some traffic after the recovery
            report = chaos.finish()
        finally:
            chaos.close()
        log = chaos.gateway.log()
    assert report.lost == [] and report.applied_twice == [] and report.duplicate_envelopes == []
    assert report.dead_letters == 0 and report.in_xq == 0 and report.parked == 0
    assert report.processed_once == report.acknowledged > 50
    assert report.answers.get("AR", 0) > 5, report.answers  # the disk really was full under traffic
    assert "data dir disk full: " in log and "data dir disk has room again" in log, log
    assert "embedded redis-server restarted" in log, log  # it exited at an AOF write error, and came back


def test_the_supervisor_waits_for_room_and_retries_a_failed_redis_start_instead_of_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 0.0)
    with mounted_tmpfs(tmp_path / "data", size_mb=8) as data_dir:
        keeper = Supervisor(Settings(data_dir=data_dir))
        keeper.redis = EmbeddedRedis(data_dir / "redis", persistent=True)
        keeper.redis.start()
        try:
            with caplog.at_level(logging.INFO, logger="gateway.services"):
                filler = fill(data_dir)
                keeper.redis.kill()  # as at an AOF write error
                keeper.redis.process = subprocess.Popen(["false"])
                keeper.redis.process.wait()
                for _ in range(3):
                    keeper._keep_redis_up()  # exited; the disk is full: not started again
                assert keeper.redis.process is None

                filler.unlink()
                with socket.socket() as taken:  # its port held by someone else: it cannot start
                    taken.bind(("127.0.0.1", keeper.redis.port))
                    keeper.disk.poll(now=True)
                    keeper._keep_redis_up()
                    assert keeper.redis.process is None
                    keeper._redis_retry_at = 0.0  # instead of the backoff
                    keeper._keep_redis_up()
                    assert keeper.redis.process is None
                keeper._redis_retry_at = 0.0
                keeper._keep_redis_up()
                assert keeper.redis.process is not None and keeper.redis.process.poll() is None
            said = [r.getMessage() for r in caplog.records]
            assert any(FULL.match(line) for line in said), said
            assert any("exited with code 1; restarting it once the data dir's disk has room" in line for line in said)
            assert sum("embedded redis-server did not start" in line for line in said) == 2, said
            assert "data dir disk has room again" in " ".join(said) and said[-1] == "embedded redis-server restarted"
        finally:
            keeper.redis.stop()
