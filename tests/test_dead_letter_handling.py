"""Discarding and purging dead letters (issue 15, item 4): a discarded letter keeps who and why and
its message; a purge removes only the raw messages of handled letters past the retention time,
never of an open one (that would lose a message)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.stages import Stage
from gateway.store.audit import cli_operator
from gateway.store.resources import ResourceStore
from tests.support.messages import adt
from tests.support.queue import parsed_envelope

DAY_MS = 86_400_000


def _letter(engine: Engine, control: str, age_days: float = 0) -> str:
    created = int(time.time() * 1000 - age_days * DAY_MS)
    letter = Letter(parsed_envelope(adt(control, "Doe")), Stage.CONVERT, "no map", created_at=created)
    DeadLetterStore(engine).park(letter)
    return letter.id


def test_a_discarded_letter_keeps_who_why_and_its_message(engine: Engine) -> None:
    store = DeadLetterStore(engine)
    letter_id = _letter(engine, "C1")
    assert store.discard(letter_id, "cli:ana", "test message from the vendor's sandbox")
    letter = store.get(letter_id)
    assert letter is not None
    assert (letter.status, letter.handled_by, letter.handled_note) == (
        "discarded",
        "cli:ana",
        "test message from the vendor's sandbox",
    )
    assert letter.raw == adt("C1", "Doe")
    assert not store.discard(letter_id, "cli:bo", "again")  # only an open letter can be discarded
    assert store.get(letter_id).handled_by == "cli:ana"  # type: ignore[union-attr]


def test_a_purge_removes_only_handled_raw_messages_past_the_retention(engine: Engine) -> None:
    store = DeadLetterStore(engine)
    old_open, old_done, new_done = _letter(engine, "C1", 40), _letter(engine, "C2", 40), _letter(engine, "C3", 1)
    store.discard(old_done, "cli:ana", "duplicate")
    store.discard(new_done, "cli:ana", "duplicate")

    assert store.purge(int(time.time() * 1000) - 30 * DAY_MS) == 1
    raws = {letter_id: store.get(letter_id).raw for letter_id in (old_open, old_done, new_done)}  # type: ignore[union-attr]
    assert raws == {old_open: adt("C1", "Doe"), old_done: b"", new_done: adt("C3", "Doe")}
    assert store.get(old_done).control_id == "C2"  # type: ignore[union-attr]  # the row stays
    assert store.purge(int(time.time() * 1000) - 30 * DAY_MS) == 0


def test_hl7gw_dlq_discard_and_purge(
    engine: Engine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HL7GW_DATABASE_URL", database_url)
    monkeypatch.setenv("HL7GW_DATA_DIR", str(tmp_path))
    letter_id = _letter(engine, "C9", 10)
    assert cli.main(["dlq", "discard", letter_id, "--reason", "sent twice by the lab"]) == 0
    assert cli.main(["dlq", "discard", letter_id, "--reason", "again"]) == 1
    assert f"dead letter {letter_id} is discarded" in capsys.readouterr().err
    assert cli.main(["dlq", "purge", "--older-than", "0"]) == 2
    assert cli.main(["dlq", "purge", "--older-than", "5"]) == 0
    assert "of 1 handled dead letter(s)" in capsys.readouterr().out
    assert cli.main(["dlq", "show", letter_id]) == 0
    shown = capsys.readouterr().out
    assert "sent twice by the lab" in shown and "(removed by hl7gw dlq purge)" in shown and "C9" in shown

    # Each action is an AuditEvent naming the operator: the discard, the refused second one, the purge.
    events = ResourceStore(engine).search("AuditEvent", {})
    actions = sorted((e["subtype"][0]["code"], e["outcome"]) for e in events)
    assert actions == [("discard", "0"), ("discard", "8"), ("purge", "0")]
    assert {e["agent"][0]["altId"] for e in events} == {cli_operator()}
    (done,) = [e for e in events if e["subtype"][0]["code"] == "discard" and e["outcome"] == "0"]
    assert done["entity"][0]["what"]["identifier"]["value"] == letter_id
