"""The chaos suite (tests/support/chaos.py): under load, a worker, the listener and the embedded Redis are
killed, Redis is down for 60 s and hangs for 60 s, the database is down for 60 s, the whole tree is
killed; afterwards
every acknowledged message is stored exactly once, nothing is in dramatiq's .XQ, and nothing had to
become a dead letter (every message sent is valid: an outage is never a message's fault).

benchmarks/chaos.py runs the same for longer, with other rates and outage lengths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import Chaos, PrivatePostgres, Report, every_fault

pytestmark = pytest.mark.slow

OUTAGE_S = 60.0


def assert_nothing_lost(report: Report) -> None:
    assert report.lost == [], f"lost: {report.lost[:20]}"
    assert report.applied_twice == [], f"applied twice: {report.applied_twice[:20]}"
    assert report.duplicate_envelopes == [], f"accepted twice: {report.duplicate_envelopes[:20]}"
    assert report.in_xq == 0 and report.parked == 0
    assert report.dead_letters == 0  # valid messages: no outage may make one a dead letter
    assert report.processed_once == report.acknowledged
    assert report.acknowledged > 2_000  # it really ran under load, through every fault
    outages = [r for r in report.recoveries if r.seconds >= OUTAGE_S]
    assert len(outages) == 3 and len(report.recoveries) == 7


def run(chaos: Chaos, capsys: pytest.CaptureFixture[str]) -> Report:
    try:
        report = every_fault(chaos, OUTAGE_S)
    finally:
        chaos.close()
    with capsys.disabled():
        print("\n" + "\n".join(report.lines()))
    return report


def test_chaos_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_nothing_lost(run(Chaos(tmp_path, log=lambda line: None), capsys))


def test_chaos_on_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not PrivatePostgres.available():
        pytest.skip("needs PostgreSQL's server binaries (initdb, pg_ctl) to run a server it can stop")
    postgres = PrivatePostgres()
    try:
        postgres.init()
        assert_nothing_lost(run(Chaos(tmp_path, postgres=postgres, log=lambda line: None), capsys))
    finally:
        postgres.remove()
