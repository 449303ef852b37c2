"""Importing batch files (gateway/services/importer.py, batch_feed.py) into a real Redis: what is
queued, what is kept as a dead letter, the counts, the report, the job record, and resuming."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from gateway.config import Settings
from gateway.envelope import Kind
from gateway.hl7.batch_ack import build_batch_ack
from gateway.journal.jobs import JobStore
from gateway.keys import IMPORT_QUEUE, Keys
from gateway.services.importer import Importer, ImportResult, file_identity
from tests.support.gateway_process import clean_env
from tests.support.import_files import a04, batch, write_a04_batch
from tests.support.queue import queued

BAD_VERSION = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240501120000||ADT^A04^ADT_A01|BADV|P|9.9\r"
BEFORE_MSH = b"PID|1||LOST^^^HOSP^MR\r"
JUNK = b"\x00\x01 junk \xff\r"


def run_import(tmp_path: Path, redis_url: str, namespace: str, path: Path, **kw: object) -> ImportResult:
    async def go() -> ImportResult:
        async with Importer(Settings(data_dir=tmp_path, redis_namespace=namespace), redis_url, **kw) as importer:  # type: ignore[arg-type]
            return await importer.import_file(path)

    return asyncio.run(go())


def test_a_batch_is_queued_as_mllp_would_rejections_and_unreadable_pieces_kept_with_their_offsets(
    tmp_path: Path, redis_url: str, redis_namespace: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "in.hl7"
    path.write_bytes(batch([BEFORE_MSH, a04(1), a04(2), JUNK, BAD_VERSION, a04(3)], declared=9))
    jobs = JobStore(engine)
    with caplog.at_level(logging.DEBUG):
        result = run_import(tmp_path, redis_url, redis_namespace, path, jobs=jobs)
    # One line per rejection and one for the file, naming positions and control ids, no content.
    assert "rejected bytes" in caplog.text and "import of in.hl7" in caplog.text
    for content in ("LOST", "junk", "Patient1", "Pat^", "19800101"):
        assert content not in caplog.text

    report = result.report
    assert (report.read, report.pieces, report.accepted, report.rejected) == (4, 2, 3, 3)
    assert result.totals == {"accepted": 3, "rejected": 3, "read": 6}
    [only] = report.batches
    assert (only.control_id, only.declared, only.read, only.mismatch) == ("B1", 9, 5, True)
    assert report.mismatch and not report.file_mismatch and report.file_batches == 1
    problems = {(p.offset, p.control_id, p.ack_code, tuple(e.code for e in p.errors)) for p in report.problems}
    data = path.read_bytes()
    assert problems == {
        (data.index(BEFORE_MSH), "", "AR", ("100",)),
        (data.index(JUNK), "", "AR", ("100",)),
        (data.index(BAD_VERSION), "BADV", "AR", ("203",)),
    }

    ack = build_batch_ack(only.header, report.file_header, report.outcomes(1)).split(b"\r")
    assert [line[:3] for line in ack if line] == [b"FHS", b"BHS", *[b"MSH", b"MSA", b"ERR"] * 3, b"BTS", b"FTS"]
    assert [line.split(b"|")[1] for line in ack if line.startswith(b"MSA")] == [b"AR"] * 3
    assert b"BTS|3" in ack and b"MSA|AR|BADV" in ack

    assert queued(redis_url, redis_namespace) == []  # nothing on the live queue: imports have their own
    envelopes = queued(redis_url, redis_namespace, IMPORT_QUEUE)
    assert [e.control_id for e in envelopes if e.kind == Kind.MESSAGE] == ["IMP-1", "IMP-2", "IMP-3"]
    assert [e.seq for e in envelopes if e.kind == Kind.MESSAGE] == [1, 2, 3]  # the sender's order
    kept = [e for e in envelopes if e.kind == Kind.REJECTED]
    assert sorted(e.raw for e in kept) == sorted([BEFORE_MSH, JUNK, BAD_VERSION])
    for letter in kept:  # a dead letter at stage intake, saying where in the file it was
        start = data.index(letter.raw)
        assert f"bytes {start}-{start + len(letter.raw)} of the imported file" in letter.meta["reason"]
        assert letter.peer == "import:in.hl7"

    job = jobs.get(result.job_id)
    assert job is not None and (job.kind, job.status, job.done, job.skipped) == ("import", "done", 3, 0)
    summary = json.loads(job.summary)
    assert summary["mismatch"] is True
    assert summary["mismatched_batches"] == [
        {"batch": 1, "control_id": "B1", "declared": 9, "read": 5, "mismatch": True, "trailer_missing": False}
    ]
    assert job.filter == {"file": "in.hl7", "sha256": file_identity(path)[0], "size": len(data)}
    assert jobs.claim("a-worker", 10_000) is None  # an import job is a record, not work for a worker


def test_a_finished_file_is_recognised_and_again_queues_nothing_new(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    path = tmp_path / "in.hl7"
    path.write_bytes(batch([a04(n) for n in range(50)]))
    first = run_import(tmp_path, redis_url, redis_namespace, path)
    assert first.status == "done" and first.totals["accepted"] == 50 and not first.report.mismatch

    renamed = tmp_path / "same-bytes-other-name.hl7"
    renamed.write_bytes(path.read_bytes())
    second = run_import(tmp_path, redis_url, redis_namespace, renamed)
    assert second.status == "already-done" and second.report.read == 0

    again = run_import(tmp_path, redis_url, redis_namespace, path, again=True)
    assert again.status == "done" and again.totals == {"duplicate": 50, "read": 50}
    assert len(queued(redis_url, redis_namespace, IMPORT_QUEUE)) == 50


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_resuming_from_any_committed_message_queues_each_message_once(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, data: st.DataObject
) -> None:
    """Whatever message the progress record stops at (it may lag the commits: a crash between a
    commit and its progress write), the import resumed from there queues every message once."""
    namespace = f"hl7gw-test-resume-{os.urandom(4).hex()}"
    tmp_path = tmp_path_factory.mktemp("resume")
    count = 40
    path = tmp_path / "in.hl7"
    path.write_bytes(batch([a04(n) for n in range(count)]))
    committed = data.draw(st.integers(0, count), label="messages committed before the crash")
    recorded = data.draw(st.integers(0, committed), label="of which the progress record knows")
    client = redis.Redis.from_url(redis_url)
    try:
        # The crash: a first import of the first ``committed`` messages, its record rewound.
        partial = tmp_path / "partial.hl7"
        partial.write_bytes(path.read_bytes()[: _end_of(path.read_bytes(), committed)])
        if committed:
            run_import(tmp_path, redis_url, namespace, partial)
        sha256, size = file_identity(path)
        key = Keys(namespace).import_progress(sha256)
        offset = _end_of(path.read_bytes(), recorded)
        index = recorded
        record = {"status": "running", "offset": offset, "batch": 1 if recorded else 0, "index": index}
        record.update(count=recorded, counts=json.dumps({"accepted": recorded}), size=size)
        client.hset(key, mapping=record)  # type: ignore[arg-type]

        result = run_import(tmp_path, redis_url, namespace, path)
        assert result.status == "done" and result.resumed_at == offset
        assert result.totals["accepted"] + result.totals.get("duplicate", 0) - recorded == count - recorded
        envelopes = [e for e in queued(redis_url, namespace, IMPORT_QUEUE) if e.kind == Kind.MESSAGE]
        assert sorted(e.control_id for e in envelopes) == sorted(f"IMP-{n}" for n in range(count))
        assert not result.report.mismatch  # the BTS-1 count still checks out across the resume
    finally:
        for stale in client.scan_iter(match=f"{namespace}:*"):
            client.delete(stale)
        client.close()


def _end_of(data: bytes, messages: int) -> int:
    """Byte offset after the first ``messages`` messages of a ``batch`` file (0: the start)."""
    if messages == 0:
        return 0
    starts = [n for n in range(len(data)) if data.startswith(b"MSH|", n)]
    return starts[messages] if messages < len(starts) else data.index(b"BTS|")


def test_an_import_killed_with_sigkill_resumes_after_the_last_committed_message(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    """hl7gw import of 50,000 messages killed with SIGKILL mid-way, then run again: it resumes
    after what was committed, and every message is queued exactly once."""
    count = 50_000
    path = write_a04_batch(tmp_path / "big.hl7", count)
    env = clean_env(HL7GW_DATA_DIR=str(tmp_path / "data"), HL7GW_REDIS_URL=redis_url,
                    HL7GW_REDIS_NAMESPACE=redis_namespace, HL7GW_LOG_LEVEL="WARNING")  # fmt: skip
    key = Keys(redis_namespace).import_progress(file_identity(path)[0])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    command = [sys.executable, "-m", "gateway.cli", "import", str(path)]
    output = (tmp_path / "import.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    output.close()
    try:
        deadline = time.monotonic() + 120
        while int(client.hget(key, "count") or 0) < 2000 and time.monotonic() < deadline:  # type: ignore[arg-type]
            assert process.poll() is None, (tmp_path / "import.log").read_text()
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        record = client.hgetall(key)
        assert record["status"] == "running" and 0 < int(record["count"]) < count  # killed mid-way
        assert len(queued(redis_url, redis_namespace, IMPORT_QUEUE)) < count

        again = subprocess.run([*command, "--json"], env=env, capture_output=True, timeout=300)
        assert again.returncode == 0, again.stderr.decode()
        [summary] = json.loads(again.stdout)["files"]
        assert summary["status"] == "done" and summary["resumed_at"] >= int(record["offset"]) > 0
        assert summary["totals"]["accepted"] + summary["totals"].get("duplicate", 0) >= count
        envelopes = queued(redis_url, redis_namespace, IMPORT_QUEUE)
        assert len(envelopes) == count
        assert len({e.control_id for e in envelopes}) == count
        assert summary["this_run"]["batches"][0]["mismatch"] is False
    finally:
        if process.poll() is None:
            process.kill()
        client.close()


def test_hl7gw_import_of_a_directory_and_of_stdin_with_its_exit_codes(
    tmp_path: Path,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import main

    for name, value in {"HL7GW_REDIS_URL": redis_url, "HL7GW_REDIS_NAMESPACE": redis_namespace,
                        "HL7GW_DATA_DIR": str(tmp_path / "data"), "HL7GW_LOG_LEVEL": "WARNING"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.hl7").write_bytes(batch([a04(n, "A") for n in range(5)], control_id="BA"))
    assert main(["import", str(inbox / "a.hl7")]) == 0
    (inbox / "b.hl7").write_bytes(batch([a04(n, "B") for n in range(5)] + [BAD_VERSION], control_id="BB"))
    capsys.readouterr()

    assert main(["import", str(inbox), "--json"]) == 1  # b.hl7 has a rejection
    files = {f["file"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert files["a.hl7"]["status"] == "already-done"
    assert files["b.hl7"]["totals"] == {"accepted": 5, "read": 6, "rejected": 1}
    b = (inbox / "b.hl7").read_bytes()
    assert files["b.hl7"]["this_run"]["problems"] == [
        {"offset": b.index(BAD_VERSION), "end": b.index(b"BTS"), "batch": 1, "index": 6, "control_id": "BADV",
         "outcome": "rejected", "ack_code": "AR", "errors": ["203"]}
    ]  # fmt: skip

    class Stdin:
        buffer = __import__("io").BytesIO(batch([a04(n, "C") for n in range(3)], declared=4))

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert main(["import", "-"]) == 1  # BTS-1 says 4, 3 read
    out = capsys.readouterr()
    assert "cannot be resumed" in out.err
    assert "-: read 3, accepted 3, duplicates 0, rejected 0\n  batch 1 (BHS-11 'B1'): BTS-1 4, read 3" in out.out
    assert len([e for e in queued(redis_url, redis_namespace, IMPORT_QUEUE) if e.kind == Kind.MESSAGE]) == 13

    monkeypatch.delenv("HL7GW_REDIS_URL")
    assert main(["import", str(inbox)]) == 2  # no Redis: no hl7gw run on this data dir
    assert "no Redis" in capsys.readouterr().err
