"""What an operator reads about a dead letter: why (segment, field and rule in words), the message by
segment and field, a dry run with the mappings as they are now; ``hl7gw dlq list|show`` and --json."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.config import load_settings
from gateway.convert.runtime.engine import Converter
from gateway.deliver.store_sink import StoreSink
from gateway.errors import MappingError, stage_of
from gateway.hl7.fields import field_name, named_path
from gateway.hl7.layout import layout
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.filters import Cursor, FilterError, LetterFilter, parse_since
from gateway.journal.messages import MessageArchive
from gateway.services.dead_letter_views import CurrentMappings, dry_run
from gateway.services.failures import reason_of
from gateway.services.pipeline import Pipeline
from tests.support.messages import adt
from tests.support.queue import parsed_envelope

NO_ID = "conversion failed at PID#2 (PID-2 Patient ID, PID-3 Patient Identifier List): no business identifier"


@pytest.fixture
def store_sink(engine: Engine) -> Iterator[StoreSink]:
    sink = StoreSink(engine)
    yield sink
    sink.close()


def failed_letter(engine: Engine, store_sink: StoreSink, raw: bytes, created_at: int | None = None) -> Letter:
    """Run ``raw`` through the real pipeline; park its failure as the worker does (services/failures.py)."""
    envelope = parsed_envelope(raw)
    with pytest.raises(MappingError) as raised:
        Pipeline(Converter.load(), store_sink, MessageArchive(engine)).process(envelope)
    exc = raised.value
    letter = Letter(envelope, stage_of(exc), reason_of(exc), type(exc).__name__, 1)
    if created_at is not None:
        letter = Letter(envelope, letter.stage, letter.reason, letter.error_type, 1, created_at)
    assert DeadLetterStore(engine).park(letter)
    return letter


def test_field_names_come_from_hl7() -> None:
    assert field_name("PID", 3) == "Patient Identifier List"
    assert field_name("MSH", 10, "2.3") == "Message Control ID"
    assert field_name("ZPI", 1) == "" and field_name("PV1", 1) == "Set ID PV1"
    assert named_path("PID-3") == "PID-3 Patient Identifier List"
    assert named_path("PID-3.4") == "PID-3.4 in Patient Identifier List"
    assert named_path("CX.4") == "CX.4"


def test_the_stored_reason_names_segment_field_and_rule_without_values(engine: Engine, store_sink: StoreSink) -> None:
    letter = failed_letter(engine, store_sink, adt("NOID-1", "Secretname", mrn=""))
    stored = DeadLetterStore(engine).get(letter.id)
    assert stored is not None and stored.stage == "convert" and stored.error_type == "MappingError"
    assert stored.reason.startswith(NO_ID) and stored.reason.endswith("(map PID[Patient], rule id: patient)")
    assert "Secretname" not in stored.reason and "HOSP" not in stored.reason


def test_layout_by_segment_and_field() -> None:
    segments = layout(adt("L-1", "Doe"))
    assert [(s["segment"], s["position"]) for s in segments] == [("MSH", 1), ("PID", 2)]
    pid = {f["field"]: (f["name"], f["value"]) for f in segments[1]["fields"]}
    assert pid["PID-3"] == ("Patient Identifier List", "M1^^^HOSP^MR") and pid["PID-5"] == ("Patient Name", "Doe^Jane")
    assert "PID-2" not in pid  # empty fields are left out


def test_dry_run_says_whether_it_converts_now() -> None:
    converter = Converter.load()
    ok = dry_run(converter, adt("D-1", "Doe"))
    assert ok["converts"] is True and ok["resources"]["Patient"] == 1 and "Provenance" in ok["resources"]
    failing = dry_run(converter, adt("D-2", "Doe", mrn=""))
    assert failing["converts"] is False and failing["stage"] == "convert" and failing["error"].startswith(NO_ID)
    assert failing["location"]["segment"] == "PID#2" and failing["location"]["rule"].startswith("map PID[Patient]")
    unreadable = dry_run(converter, b"not hl7 at all")
    assert unreadable["converts"] is False and unreadable["stage"] == "parse"


def test_a_mapping_change_is_seen_by_the_next_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HL7GW_MAPPINGS_DIR", str(tmp_path))
    current = CurrentMappings(load_settings().conversion)
    first = current.converter()
    assert current.converter() is first  # unchanged files: compiled once
    (tmp_path / "README.txt").write_text("a site note\n")
    assert current.converter() is not first
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "PID_Patient.yaml").write_text("segment: [\n")
    answer = current.dry_run(adt("M-1", "Doe"))
    assert answer["converts"] is False and answer["error"].startswith("the mappings do not load")


def test_a_site_rule_fails_then_a_fix_converts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's story: a site overlay requires PID-8; a message without it fails, the reason
    names the segment, field and map; once the overlay is fixed the dry run converts it."""
    shipped = (Path(__file__).resolve().parent.parent / "mappings" / "segments" / "PID_Patient.yaml").read_text()
    rule = '{from: PID-8, to: gender, datatype: "CWE[code]", table: AdministrativeSex}'
    assert rule in shipped
    (tmp_path / "segments").mkdir()
    site_map = tmp_path / "segments" / "PID_Patient.yaml"
    site_map.write_text(shipped.replace(rule, rule[:-1] + ", required: true}"))
    monkeypatch.setenv("HL7GW_MAPPINGS_DIR", str(tmp_path))
    current = CurrentMappings(load_settings().conversion)

    failing = current.dry_run(adt("SITE-1", "Doe"))  # its PID has no PID-8
    assert failing["converts"] is False and failing["error"] == (
        "conversion failed at PID#2 (PID-8 Administrative Sex): PID-8 is empty or unusable, "
        "but Patient.gender is required (map PID[Patient])"
    )
    site_map.write_text(shipped)  # the fix
    fixed = current.dry_run(adt("SITE-1", "Doe"))
    assert fixed["converts"] is True and fixed["resources"]["Patient"] == 1


def test_filters_and_cursor_pages(engine: Engine, store_sink: StoreSink) -> None:
    now = int(time.time() * 1000)
    letters = [failed_letter(engine, store_sink, adt(f"P-{n}", "Doe", mrn=""), now - n * 1000) for n in range(5)]
    store = DeadLetterStore(engine)
    first = store.list(where=LetterFilter(stage="convert"), limit=2)
    assert [d.id for d in first] == [letters[0].id, letters[1].id]
    after = Cursor(first[-1].created_at, first[-1].id)
    assert [d.id for d in store.list(where=LetterFilter(), limit=2, after=Cursor.decode(after.encode()))] == [
        letters[2].id,
        letters[3].id,
    ]
    assert store.list(where=LetterFilter(stage="deliver")) == []
    assert len(store.list(where=LetterFilter(sender="ADT|HOSP", since=now - 2500))) == 3
    assert store.list(where=LetterFilter(sender="OTHER|X")) == []
    with pytest.raises(FilterError):
        Cursor.decode("%%%")
    with pytest.raises(FilterError):
        parse_since("last tuesday")
    assert parse_since("2h", now_ms=now) == now - 7_200_000
    assert parse_since("2026-12-07T08:00:00Z") == parse_since("2026-12-07T09:00:00+01:00")


def test_dlq_show_and_list_from_the_command_line(
    database_url: str,
    engine: Engine,
    store_sink: StoreSink,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    letter = failed_letter(engine, store_sink, adt("CLI-1", "Doe", mrn=""))
    monkeypatch.setenv("HL7GW_DATABASE_URL", database_url)

    assert cli.main(["dlq", "show", letter.id]) == 0
    text = capsys.readouterr().out
    assert f"reason: {NO_ID}" in text
    assert "would still fail at convert: conversion failed at PID#2" in text
    assert "PID#2\n" in text and "PID-3    Patient Identifier List" in text
    assert "--- raw message ---\nMSH|^~\\&|ADT|HOSP" in text

    assert cli.main(["dlq", "show", letter.id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == letter.id and data["dry_run"]["converts"] is False
    assert data["layout"][1]["segment"] == "PID" and data["raw"].startswith("MSH|")

    assert cli.main(["dlq", "show", "no-such-letter"]) == 1
    assert cli.main(["dlq", "show", "no-such-letter", "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"error": "no dead letter no-such-letter"}

    assert cli.main(["dlq", "list", "--json", "--stage", "convert", "--sender", "ADT|HOSP", "--since", "1h"]) == 0
    listed = json.loads(capsys.readouterr().out)["dead_letters"]
    assert [d["id"] for d in listed] == [letter.id] and "raw" not in listed[0]
    assert cli.main(["dlq", "list"]) == 0
    assert letter.id in capsys.readouterr().out
    assert cli.main(["dlq", "list", "--stage", "validate"]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert cli.main(["dlq", "list", "--since", "yesterday-ish"]) == 2
    assert cli.main(["dlq", "list", "--status", "lost"]) == 2
