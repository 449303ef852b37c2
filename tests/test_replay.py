"""Replaying dead letters (issue 15, item 1): the raw message back on the queue as a new envelope
naming its letter, with the first attempt's receive time and sequence; the letter linked to it; a
failed replay a new letter linked to the old; intake letters judged again, sink letters to their
sink only. With real SQLite/PostgreSQL, Redis and a running worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.convert.runtime.engine import Converter
from gateway.deliver.fanout import SinkFanout
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope, Kind
from gateway.errors import MappingError, RejectedAtIntake
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.messages import MessageArchive
from gateway.mllp.triage import IntakeRules, Triage
from gateway.queue.broker import make_broker
from gateway.services.pipeline import Pipeline
from gateway.services.replay import Replayer, ReplayRefused, queue_at
from gateway.sinkspec import SinkSpec
from gateway.stages import Stage, sink_stage
from gateway.store.resources import ResourceStore
from tests.support.messages import adt
from tests.support.queue import RunningWorker, parsed_envelope, queued, wait_until, worker_settings

NO_IDENTIFIER = adt("C-BROKEN", "Doe").replace(b"|M1^^^HOSP^MR|", b"||")


@pytest.fixture
def store_sink(engine: Engine) -> StoreSink:
    sink = StoreSink(engine)
    yield sink  # type: ignore[misc]
    sink.close()


def _letter(engine: Engine, raw: bytes, stage: str = Stage.CONVERT, seq: int = 7, **kw: object) -> tuple[str, Envelope]:
    envelope = parsed_envelope(raw, seq=seq, received_at=1_714_560_000_000, **kw)  # type: ignore[arg-type]
    letter = Letter(envelope, stage, "conversion failed", "MappingError")
    assert DeadLetterStore(engine).park(letter)
    return letter.id, envelope


def test_a_replay_is_a_new_envelope_with_the_first_receive_time_and_sequence(engine: Engine) -> None:
    letter_id, first = _letter(engine, NO_IDENTIFIER)
    sent: list[Envelope] = []
    done = Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")

    (again,) = sent
    assert again.id != first.id and again.raw == first.raw and again.kind == Kind.MESSAGE
    assert (again.received_at, again.seq, again.sender, again.control_id) == (
        first.received_at,
        7,
        first.sender,
        first.control_id,
    )
    assert again.meta["replay_of"] == letter_id and done.marked
    letter = DeadLetterStore(engine).get(letter_id)
    assert letter is not None and (letter.status, letter.replayed_as, letter.handled_by) == (
        "replayed",
        again.id,
        "cli:ana",
    )
    with pytest.raises(ReplayRefused, match=f"replayed as {again.id}"):
        Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")
    with pytest.raises(ReplayRefused, match="no dead letter"):
        Replayer(DeadLetterStore(engine), sent.append).replay("0" * 36, "cli:ana")
    assert len(sent) == 1  # a refused replay queues nothing
    # Each attempt is an AuditEvent: the replay (naming the letter and the new message), two refusals.
    events = ResourceStore(engine).search("AuditEvent", {"subtype": ["replay"]})
    assert sorted(e["outcome"] for e in events) == ["0", "8", "8"]
    (replayed,) = [e for e in events if e["outcome"] == "0"]
    assert {x["what"]["identifier"]["value"] for x in replayed["entity"]} == {letter_id, again.id}


def test_a_replay_that_fails_again_is_a_new_letter_linked_to_the_old(engine: Engine, store_sink: StoreSink) -> None:
    letter_id, _ = _letter(engine, NO_IDENTIFIER)
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    with pytest.raises(MappingError) as failed:
        pipeline.process(sent[0])
    again = Letter(sent[0], Stage.CONVERT, str(failed.value), "MappingError")  # as the failure policy writes it
    DeadLetterStore(engine).park(again)

    chain = DeadLetterStore(engine).chain(again.id)
    assert [(d.id, d.status) for d in chain] == [(again.id, "open"), (letter_id, "replayed")]
    assert chain[0].replay_of == letter_id and chain[1].replayed_as == sent[0].id


def test_an_edited_replay_converts_and_the_letter_keeps_its_bytes(engine: Engine, store_sink: StoreSink) -> None:
    letter_id, first = _letter(engine, NO_IDENTIFIER)
    fixed = adt("C-BROKEN", "Doe", mrn="M77")
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana", fixed)

    assert sent[0].raw == fixed and sent[0].meta["edited"] == "1"
    Pipeline(Converter.load(), store_sink, MessageArchive(engine)).process(sent[0])
    (patient,) = ResourceStore(engine).search("Patient", {"identifier": ["M77"]})
    assert patient["name"][0]["family"] == "Doe"
    letter = DeadLetterStore(engine).get(letter_id)
    assert letter is not None and letter.raw == first.raw and "edited" in letter.handled_note


def test_replaying_what_is_stored_changes_nothing(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    letter_id, first = _letter(engine, adt("C-OK", "Roe"), stage=Stage.DELIVER)
    pipeline.process(first)  # (it had been stored after all, say, when the letter was written)
    stored = ResourceStore(engine).search("Patient", {"identifier": ["M1"]})
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")
    pipeline.process(sent[0])
    again = ResourceStore(engine).search("Patient", {"identifier": ["M1"]})
    assert [p["meta"]["versionId"] for p in again] == [p["meta"]["versionId"] for p in stored] == ["1"]
    assert MessageArchive(engine).get(sent[0].id).status == "processed"  # type: ignore[union-attr]


def test_an_intake_rejection_is_judged_by_the_rules_as_they_are_now(engine: Engine) -> None:
    old = adt("C-OLD", "Doe").replace(b"|2.5.1", b"|2.0", 1)
    letter_id, _ = _letter(engine, old, stage=Stage.INTAKE, kind=Kind.REJECTED)
    still = Triage(IntakeRules())  # 2.0 is still not accepted: rejected again, a new letter to come
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append, still).replay(letter_id, "cli:ana")
    assert sent[0].kind == Kind.REJECTED and sent[0].meta["reason"].startswith("AR: 203")
    with pytest.raises(RejectedAtIntake):
        Pipeline(Converter.load(), StoreSink(engine), MessageArchive(engine)).process(sent[0])

    letter_id, _ = _letter(engine, old.replace(b"C-OLD", b"C-OLD2"), stage=Stage.INTAKE, kind=Kind.REJECTED)
    now = Triage(IntakeRules(versions=frozenset({"2.0", "2.5.1"})))  # the site now takes 2.0
    Replayer(DeadLetterStore(engine), sent.append, now).replay(letter_id, "cli:ana")
    assert sent[1].kind == Kind.MESSAGE and sent[1].control_id == "C-OLD2"


def test_an_acknowledgement_letter_is_kept_again_not_converted(engine: Engine, store_sink: StoreSink) -> None:
    ack = b"MSH|^~\\&|LAB|HOSP|GW|GW|20240501120000||ACK^R01^ACK|A-1|P|2.5.1\rMSA|AA|C-9\r"
    letter_id, _ = _letter(engine, ack, stage=Stage.ARCHIVE, kind=Kind.ACK)
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")
    assert sent[0].kind == Kind.ACK
    Pipeline(Converter.load(), store_sink, MessageArchive(engine)).process(sent[0])
    assert MessageArchive(engine).get(sent[0].id).status == "ack"  # type: ignore[union-attr]


def test_a_sink_letter_goes_to_that_sink_only(
    engine: Engine, store_sink: StoreSink, redis_url: str, redis_namespace: str
) -> None:
    specs = (SinkSpec("hapi", "http://hapi.test/fhir"), SinkSpec("lake", "http://lake.test/fhir"))
    broker = make_broker(redis_url, namespace=redis_namespace)
    for spec in specs:
        broker.declare_queue(spec.queue)
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine), SinkFanout(broker, specs))
    letter_id, _ = _letter(engine, adt("C-SINK", "Doe"), stage=sink_stage("hapi"))
    sent: list[Envelope] = []
    Replayer(DeadLetterStore(engine), sent.append).replay(letter_id, "cli:ana")
    pipeline.process(sent[0])

    client = redis.Redis.from_url(redis_url)
    waiting = {spec.name: client.hlen(f"{redis_namespace}:{spec.queue}.msgs") for spec in specs}
    assert waiting == {"hapi": 1, "lake": 0}
    broker.close()


def test_a_letter_replayed_through_the_queue_is_processed_by_the_worker(
    engine: Engine, database_url: str, redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    letter_id, _ = _letter(engine, NO_IDENTIFIER)
    fixed = adt("C-BROKEN", "Doe", mrn="M88")
    with queue_at(redis_url, redis_namespace) as enqueue:
        replayed = Replayer(DeadLetterStore(engine), enqueue).replay(letter_id, "cli:ana", fixed)
    assert [e.id for e in queued(redis_url, redis_namespace)] == [replayed.envelope.id]

    with RunningWorker(worker_settings(tmp_path, database_url, redis_namespace), redis_url):
        wait_until(
            lambda: getattr(MessageArchive(engine).get(replayed.envelope.id), "status", "") == "processed",
            what="the replayed message processed",
        )
    assert ResourceStore(engine).search("Patient", {"identifier": ["M88"]})


def test_hl7gw_dlq_replay(
    engine: Engine,
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    letter_id, _ = _letter(engine, NO_IDENTIFIER)
    fixed = tmp_path / "fixed.hl7"
    fixed.write_bytes(adt("C-BROKEN", "Doe", mrn="M99"))
    for name, value in (("HL7GW_DATABASE_URL", database_url), ("HL7GW_REDIS_URL", redis_url)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HL7GW_REDIS_NAMESPACE", redis_namespace)
    monkeypatch.setenv("HL7GW_DATA_DIR", str(tmp_path))

    assert cli.main(["dlq", "replay", letter_id, "--raw", str(fixed)]) == 0
    out = capsys.readouterr().out
    (envelope,) = queued(redis_url, redis_namespace)
    assert f"replayed as message {envelope.id}" in out and envelope.raw == fixed.read_bytes()
    assert cli.main(["dlq", "replay", letter_id]) == 1  # replayed already: refused, nothing queued
    assert "is replayed" in capsys.readouterr().err and len(queued(redis_url, redis_namespace)) == 1
    assert cli.main(["dlq", "show", letter_id]) == 0
    shown = capsys.readouterr().out
    assert f"replayed as: message {envelope.id}" in shown
    assert "the edited message it was replayed with" not in shown  # not processed yet: nothing archived
