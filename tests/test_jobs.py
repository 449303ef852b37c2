"""Operator jobs (issue 15, item 3): bulk replay of the dead letters a filter matches and reprocess of
archived messages through the current mappings; durable in the database, paced, pausable and
cancellable, and resumed from the cursor by another worker when one dies. Real SQLite/PostgreSQL,
Redis and a running worker."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.convert.runtime.engine import Converter, default_mappings_dir
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.jobs import JobStore
from gateway.journal.messages import MessageArchive
from gateway.services.jobs import JobRunner, check_filter
from gateway.services.pipeline import Pipeline
from gateway.stages import Stage
from gateway.store.resources import ResourceStore
from tests.support.messages import adt
from tests.support.queue import RunningWorker, parsed_envelope, wait_until, worker_settings


def _letters(engine: Engine, count: int, stage: str = Stage.CONVERT, sender_app: str = "ADT") -> list[str]:
    ids = []
    for n in range(count):
        raw = adt(f"J-{stage}-{n}", "Doe", mrn=f"J{n}").replace(b"|ADT|HOSP|", f"|{sender_app}|HOSP|".encode(), 1)
        letter = Letter(parsed_envelope(raw, seq=n + 1), stage, "no map", created_at=1_700_000_000_000 + n)
        DeadLetterStore(engine).park(letter)
        ids.append(letter.id)
    return ids


def test_a_replay_job_replays_each_matching_letter_once_at_the_rate(engine: Engine) -> None:
    wanted = _letters(engine, 7)
    _letters(engine, 2, stage=Stage.VALIDATE)  # not matched by the filter
    job = JobStore(engine).create("replay", check_filter("replay", {"stage": "convert"}), "cli:ana")
    sent: list[Envelope] = []
    slept: list[float] = []
    runner = JobRunner(engine, sent.append, rate=5, sleep=slept.append)

    while runner.step():
        if JobStore(engine).get(job.id).status == "done":  # type: ignore[union-attr]
            break
    assert sorted(e.meta["replay_of"] for e in sent) == sorted(wanted)
    done = JobStore(engine).get(job.id)
    assert done is not None and (done.status, done.done, done.skipped) == ("done", 7, 0)
    assert done.summary == "7 message(s) queued, 0 skipped"
    assert {DeadLetterStore(engine).get(i).status for i in wanted} == {"replayed"}  # type: ignore[union-attr]
    # 5 a second: seven items take at least six fifths of a second of waiting.
    assert sum(slept) >= 1.1


def test_a_job_whose_worker_died_is_taken_over_from_its_cursor(engine: Engine) -> None:
    wanted = _letters(engine, 12)
    job = JobStore(engine).create("replay", {}, "cli:ana")
    sent: list[Envelope] = []
    first = JobRunner(engine, sent.append, rate=5, owner="w1", lease_ms=200, sleep=lambda s: None)
    assert first.step()  # one slice (5 letters), then the worker "dies"
    assert len(sent) == 5 and JobStore(engine).get(job.id).cursor  # type: ignore[union-attr]

    second = JobRunner(engine, sent.append, rate=5, owner="w2", lease_ms=200, sleep=lambda s: None)
    assert not second.step()  # w1's lease still runs: nothing to take
    time.sleep(0.25)
    while second.step():
        if JobStore(engine).get(job.id).status == "done":  # type: ignore[union-attr]
            break
    assert sorted(e.meta["replay_of"] for e in sent) == sorted(wanted)  # each once, none lost
    assert JobStore(engine).get(job.id).status == "done" and not first.step()  # type: ignore[union-attr]


def test_a_job_never_takes_what_it_made_itself(engine: Engine, tmp_path: Path) -> None:
    """A replay that fails again is a new letter the job does not replay again (and again); a
    reprocessed copy is a new archived message the job does not reprocess again."""
    _letters(engine, 2)
    job = JobStore(engine).create("replay", {}, "cli:ana")
    sent: list[Envelope] = []
    runner = JobRunner(engine, sent.append, rate=1000, sleep=lambda s: None)
    assert runner.step()
    for envelope in sent:  # each replay fails again: a new open letter, written after the job began
        DeadLetterStore(engine).park(Letter(envelope, Stage.CONVERT, "still no map"))
    while runner.step():
        if JobStore(engine).get(job.id).status == "done":  # type: ignore[union-attr]
            break
    assert len(sent) == 2 and len(DeadLetterStore(engine).list(status="open")) == 2

    sink = StoreSink(engine)
    pipeline = Pipeline(Converter.load(), sink, MessageArchive(engine))
    pipeline.process(parsed_envelope(adt("R-9", "Doe", mrn="R9")))
    time.sleep(0.01)
    again = JobStore(engine).create("reprocess", {"sender": "ADT|HOSP"}, "cli:ana")
    copies: list[Envelope] = []
    reprocessor = JobRunner(engine, copies.append, rate=1000, sleep=lambda s: None)
    assert reprocessor.step()
    for copy in copies:
        pipeline.process(copy)  # archived now: after the job began
    while reprocessor.step():
        if JobStore(engine).get(again.id).status == "done":  # type: ignore[union-attr]
            break
    assert len(copies) == 1
    sink.close()


def test_pause_resume_and_cancel(engine: Engine) -> None:
    _letters(engine, 3)
    jobs = JobStore(engine)
    job = jobs.create("replay", {}, "cli:ana")
    sent: list[Envelope] = []
    runner = JobRunner(engine, sent.append, rate=1000, sleep=lambda s: None)
    assert jobs.control(job.id, "pause") and not jobs.control(job.id, "pause")
    assert not runner.step() and sent == []  # a paused job is not worked on
    assert jobs.control(job.id, "resume")
    assert runner.step() and len(sent) == 3
    assert jobs.control(job.id, "cancel") and jobs.get(job.id).status == "cancelled"  # type: ignore[union-attr]
    assert not runner.step() and not jobs.control(job.id, "resume")


def test_filters_are_checked() -> None:
    with pytest.raises(ValueError, match="has no filter colour"):
        check_filter("replay", {"colour": "red"})
    with pytest.raises(ValueError, match="milliseconds"):
        check_filter("reprocess", {"since": "yesterday"})
    assert check_filter("replay", {"stage": "convert", "sender": None}) == {"stage": "convert"}


def test_a_reprocess_after_a_mapping_fix_corrects_what_is_stored(engine: Engine, tmp_path: Path) -> None:
    sink = StoreSink(engine)
    before = Pipeline(Converter.load(), sink, MessageArchive(engine))
    first = parsed_envelope(adt("R-1", "Doe", mrn="R1"))
    before.process(first)
    (stored,) = ResourceStore(engine).search("Patient", {"identifier": ["R1"]})
    assert stored["identifier"][0]["system"] == "urn:hl7gw:v2-namespace:HOSP"

    site = tmp_path / "site" / "tables"
    site.mkdir(parents=True)
    shipped = (default_mappings_dir() / "tables/IdentifierSystem.yaml").read_text()
    site.joinpath("IdentifierSystem.yaml").write_text(shipped + "  HOSP: https://hospital.example.org/sid/mrn\n")
    after = Pipeline(Converter.load(overlay_dir=tmp_path / "site"), sink, MessageArchive(engine))

    job = JobStore(engine).create("reprocess", check_filter("reprocess", {"sender": "ADT|HOSP"}), "cli:ana")
    sent: list[Envelope] = []
    JobRunner(engine, sent.append, rate=1000, sleep=lambda s: None).step()
    (again,) = sent
    assert (again.raw, again.received_at, again.seq, again.meta["reprocess_of"]) == (
        first.raw,
        first.received_at,
        first.seq,
        first.id,
    )
    after.process(again)
    (patient,) = ResourceStore(engine).search("Patient", {"identifier": ["R1"]})
    assert patient["identifier"][0]["system"] == "https://hospital.example.org/sid/mrn"
    assert patient["meta"]["versionId"] == "2" and job.kind == "reprocess"
    # The message's Provenance names the job that ran it again.
    provenance = next(
        p for p in ResourceStore(engine).search("Provenance", {}) if any(e.get("role") == "source" for e in p["entity"])
    )
    assert {"system": "urn:hl7gw:job", "value": job.id} in [a["who"].get("identifier") for a in provenance["agent"]]
    sink.close()


def test_a_worker_runs_a_replay_job_started_from_the_command_line(
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Letters of messages that convert now (say, after a mapping fix).
    ids = _letters(engine, 6, stage=Stage.CONVERT, sender_app="LAB")
    monkeypatch.setenv("HL7GW_DATABASE_URL", database_url)
    monkeypatch.setenv("HL7GW_DATA_DIR", str(tmp_path))
    assert cli.main(["dlq", "replay", "--all", "--stage", "convert", "--sender", "LAB|HOSP"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert cli.main(["dlq", "replay", "--all", "--stage", "convert", "--since", "last week"]) != 0
    assert "is not an ISO 8601 date-time" in capsys.readouterr().err

    settings = worker_settings(tmp_path, database_url, redis_namespace, replay_rate=100)
    with RunningWorker(settings, redis_url):
        wait_until(lambda: JobStore(engine).get(job_id).status == "done", what="the job done")  # type: ignore[union-attr]
        wait_until(
            lambda: all(ResourceStore(engine).search("Patient", {"identifier": [f"J{n}"]}) for n in range(6)),
            what="every replayed message stored",
        )
    assert {DeadLetterStore(engine).get(i).status for i in ids} == {"replayed"}  # type: ignore[union-attr]
    assert cli.main(["jobs", "show", job_id]) == 0
    assert "6 message(s) queued, 0 skipped" in capsys.readouterr().out
    assert cli.main(["jobs", "show", job_id, "--follow"]) == 0  # done: one progress line and the summary
    assert "queued       6" in capsys.readouterr().out
    assert cli.main(["jobs", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["jobs"]
    assert (listed["id"], listed["status"], listed["queued"]) == (job_id, "done", 6)
    assert cli.main(["jobs", "cancel", job_id]) == 1  # done: nothing to cancel
    # One AuditEvent for the job (not one per letter), and one for the refused cancel.
    events = ResourceStore(engine).search("AuditEvent", {})
    assert sorted((e["subtype"][0]["code"], e["outcome"]) for e in events) == [("job-cancel", "8"), ("replay", "0")]


def test_a_failing_slice_is_said_once_per_run_of_failures(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from sqlalchemy.exc import OperationalError

    caplog.set_level(logging.INFO, logger="gateway.services.jobs")
    runner = JobRunner(engine, lambda envelope: None, rate=1000)
    stop = threading.Event()
    outcomes = iter([OperationalError("x", {}, Exception("database is locked"))] * 5 + [False] * 3)

    def step() -> bool:  # the database away for five rounds (fault injection), then back
        outcome = next(outcomes, None)
        if outcome is None:
            stop.set()
            return False
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    runner.step = step  # type: ignore[method-assign]
    runner.run(stop, idle_s=0.01)
    said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records if r.name == "gateway.services.jobs"]
    assert said == [("WARNING", "operator jobs wait"), ("INFO", "operator jobs going on")]
