"""What operators see: a message's journey, a resource's trail, superseded writes, sink backlog."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from gateway import cli
from gateway.convert.runtime.engine import Converter
from gateway.deliver.source import source_of
from gateway.deliver.store_sink import StoreSink
from gateway.hl7.message import parse
from gateway.journal import provenance
from gateway.journal.deliveries import DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.services.operator_views import list_superseded, show_message, show_trail, sink_status
from gateway.services.pipeline import Pipeline
from tests.support.messages import adt
from tests.support.queue import parsed_envelope


@pytest.fixture
def store_sink(engine: Engine) -> Iterator[StoreSink]:
    sink = StoreSink(engine)
    yield sink
    sink.close()


def _text(view: Any, *args: Any, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = view(*args, out, **kw)
    return code, out.getvalue()


def test_an_older_message_shows_as_superseded_everywhere(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    newer = parsed_envelope(adt("NEW-1", "Newer", evn2="20240501130000"), seq=2)
    older = parsed_envelope(adt("OLD-1", "Older", evn2="20240501120000"), seq=1)
    pipeline.process(newer)
    pipeline.process(older)
    (patient,) = [r for r in provenance.for_message(engine, newer.id) if r.type == "Patient"]

    code, text = _text(show_message, engine, "OLD-1")  # found by MSH-10
    assert code == 0
    assert f"message {older.id}" in text and "MSH-10 OLD-1" in text and "status processed" in text
    assert f"Patient/{patient.id} v1 superseded (kept version by message {newer.id})" in text

    code, text = _text(list_superseded, engine, 10)
    assert code == 0 and f"Patient/{patient.id} v1" in text and older.id in text and newer.id in text

    code, text = _text(show_trail, engine, f"Patient/{patient.id}")
    lines = text.splitlines()
    assert code == 0 and len(lines) == 2
    assert "created" in lines[0] and "MSH-10 NEW-1" in lines[0]
    assert "superseded" in lines[1] and "MSH-10 OLD-1" in lines[1] and newer.id in lines[1]


def test_a_message_by_its_id_with_raw_text(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    received = parsed_envelope(adt("C-RAW", "Doe"))
    pipeline.process(received)
    code, text = _text(show_message, engine, received.id, raw=True)
    assert code == 0 and "v1 created" in text and "--- raw message ---" in text and "PID|1||M1^^^HOSP^MR" in text


def test_unknown_message_and_resource(engine: Engine) -> None:
    assert _text(show_message, engine, "nope") == (1, "no message with id or MSH-10 'nope'\n")
    assert _text(show_trail, engine, "Patient/nope")[0] == 1
    assert _text(show_trail, engine, "nonsense")[0] == 2
    assert _text(list_superseded, engine, 10) == (0, "no superseded writes\n")
    assert _text(sink_status, engine) == (0, "no remote sink deliveries recorded\n")


def test_sink_backlog_and_a_message_per_sink(engine: Engine, store_sink: StoreSink) -> None:
    received = parsed_envelope(adt("C-SINK", "Doe"))
    message = parse(received.raw.decode())
    store_sink.deliver(
        Converter.load().convert(message), source_of(received, message), received, "ADT^A08^ADT_A01", ("hapi", "lab")
    )
    states = DeliveryStates(engine)
    states.delivered(received.id, "lab")
    states.attempted(received.id, "hapi", "503 Service Unavailable", 0)

    code, text = _text(sink_status, engine)
    assert code == 0
    assert "sink hapi: pending 1" in text and "sink lab: delivered 1" in text
    assert f"message {received.id}, 1 attempt(s), last error: 503 Service Unavailable" in text

    code, text = _text(show_message, engine, received.id)
    assert "sink hapi: pending, 1 attempt(s): 503 Service Unavailable" in text and "sink lab: delivered" in text


def test_the_commands_read_the_configured_database(
    database_url: str,
    engine: Engine,
    store_sink: StoreSink,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    pipeline.process(parsed_envelope(adt("C-CLI", "Doe")))
    monkeypatch.setenv("HL7GW_DATABASE_URL", database_url)
    assert cli.main(["message", "C-CLI"]) == 0
    assert "MSH-10 C-CLI" in capsys.readouterr().out
    assert cli.main(["superseded"]) == 0
    assert "no superseded writes" in capsys.readouterr().out
    assert cli.main(["sinks"]) == 0
    assert cli.main(["message", "missing"]) == 1


def test_what_the_conversion_could_not_carry_is_on_the_message_record(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    text = adt("C-NOTES", "Doe").replace(b"^Jane\r", b"^Jane||19801332|F\r")
    received = parsed_envelope(text + b"OBX|1|NM|8302-2^Height^LN||1,80|m|||||F\r")
    pipeline.process(received)
    archived = MessageArchive(engine).get(received.id)
    assert archived is not None and archived.status == "processed"
    assert archived.notes.split("\n") == ["PID-7 is not a date; left out", "OBX-5 is not a valid NM; kept as text"]
    code, shown = _text(show_message, engine, received.id)
    assert code == 0 and "note: PID-7 is not a date; left out" in shown and "note: OBX-5 is not a valid NM" in shown
