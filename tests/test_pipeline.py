"""The pipeline's delivery step: the message's source, and one commit for resources, archive and provenance."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from gateway.config import load_settings
from gateway.convert.runtime.engine import Converter
from gateway.db.schema import sink_delivery
from gateway.deliver.source import dtm_to_utc, source_of
from gateway.deliver.store_sink import StoreSink
from gateway.errors import DeliveryError
from gateway.hl7.message import parse
from gateway.journal import provenance
from gateway.journal.deliveries import DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.services.pipeline import Pipeline
from gateway.store.ordering import Source
from tests.conftest import sample
from tests.support.faults import fail_inserts_of
from tests.support.fhir_bundles import observation, patient, put, transaction
from tests.support.messages import adt
from tests.support.queue import parsed_envelope


# -- source -------------------------------------------------------------------------------------------
def test_the_source_time_is_evn2_else_msh7_else_receipt() -> None:
    with_evn = parsed_envelope(adt("C1", "Doe", msh7="20240501120000", evn2="20240501113000+0200"), seq=7)
    source = source_of(with_evn, parse(with_evn.raw.decode()))
    assert source == Source(with_evn.id, "ADT|HOSP", "C1", 7, datetime(2024, 5, 1, 9, 30))

    only_msh = parsed_envelope(adt("C2", "Doe", msh7="202405011200-0500", evn2=""))
    assert source_of(only_msh, parse(only_msh.raw.decode())).time == datetime(2024, 5, 1, 17, 0)

    neither = parsed_envelope(adt("C3", "Doe", msh7="not a date"), received_at=1_714_564_800_250)
    assert source_of(neither, parse(neither.raw.decode())).time == datetime(2024, 5, 1, 12, 0, 0, 250_000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("20240501", datetime(2024, 5, 1)),
        ("202405011230", datetime(2024, 5, 1, 12, 30)),
        ("20240501123045.1234", datetime(2024, 5, 1, 12, 30, 45, 123_400)),
        ("20240501003045+0130", datetime(2024, 4, 30, 23, 0, 45)),
        ("20240501233045-0230", datetime(2024, 5, 2, 2, 0, 45)),
        ("20240231", None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_dtm_to_utc(text: str, expected: datetime | None) -> None:
    assert dtm_to_utc(text) == expected


def _header(sender: str, msh7: str) -> Any:
    app, facility = sender.split("|")
    return parse(f"MSH|^~\\&|{app}|{facility}|GW|GWF|{msh7}||ADT^A01^ADT_A01|C1|P|2.5.1\rPID|1||1^^^H^MR")


def test_a_time_without_offset_is_in_the_senders_zone() -> None:
    settings = load_settings(default_tz="America/New_York", sender_tz="LAB|HOSP=Europe/Berlin")
    converter = Converter.configured(settings.conversion)

    def zone(sender: str, msh7: str = "20240101120000+0900") -> Any:  # configured zones win over MSH-7
        return converter.zone_for(_header(sender, msh7))

    assert dtm_to_utc("202405011200", zone("LAB|HOSP")) == datetime(2024, 5, 1, 10, 0)  # CEST, +02:00
    assert dtm_to_utc("202401151200", zone("ADT|HOSP")) == datetime(2024, 1, 15, 17, 0)  # EST, -05:00
    assert dtm_to_utc("202401151200+0100", zone("ADT|HOSP")) == datetime(2024, 1, 15, 11, 0)  # its own


def test_without_a_configured_zone_msh7_then_the_host_says_it() -> None:
    hosted = Converter.load(host_tz="Asia/Tokyo")
    from_msh7 = hosted.zone_for(_header("ADT|HOSP", "20240101120000-0330"))
    assert dtm_to_utc("202401151200", from_msh7) == datetime(2024, 1, 15, 15, 30)
    from_host = hosted.zone_for(_header("ADT|HOSP", "20240101120000"))
    assert dtm_to_utc("202401151200", from_host) == datetime(2024, 1, 15, 3, 0)
    assert Converter.load().zone_for(_header("ADT|HOSP", "20240101120000")) is None


# -- one commit -----------------------------------------------------------------------------------------
@pytest.fixture
def store_sink(engine: Engine) -> Any:
    sink = StoreSink(engine)
    yield sink
    sink.close()


def test_a_processed_message_is_archived_with_what_it_did(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    first = parsed_envelope(sample("v2-to-fhir-ig/ADT_A01.hl7"))

    pipeline.process(first)

    archived = MessageArchive(engine).get(first.id)
    assert archived is not None and archived.status == "processed" and archived.attempts == 1
    assert archived.message_type == "ADT^A01^ADT_A01" and archived.raw == first.raw
    assert "Patient/" in archived.detail and "v1 created" in archived.detail
    made = provenance.for_message(engine, first.id)
    assert {r.type for r in made} >= {"Patient", "Provenance"} and {r.outcome for r in made} == {"created"}

    pipeline.process(first)  # redelivered by the queue: counted, nothing new

    again = MessageArchive(engine).get(first.id)
    assert again is not None and again.attempts == 2 and "v1 unchanged" in again.detail
    assert provenance.for_message(engine, first.id) == made


def test_superseded_writes_show_in_the_archive_detail(engine: Engine, store_sink: StoreSink) -> None:
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    newer = parsed_envelope(adt("C2", "Newer", evn2="20240501130000"), seq=2)
    older = parsed_envelope(adt("C1", "Older", evn2="20240501120000"), seq=1)
    pipeline.process(newer)
    pipeline.process(older)

    archived = MessageArchive(engine).get(older.id)
    assert archived is not None and f"superseded by message {newer.id}" in archived.detail
    (current,) = store_sink.store.search("Patient", {"identifier": ["M1"]})
    assert current["name"][0]["family"] == "Newer"


def test_a_resend_after_the_dedup_window_keeps_its_first_place(engine: Engine, store_sink: StoreSink) -> None:
    """Same sender, same MSH-10, sent again a month later with a new sequence number: still older."""
    pipeline = Pipeline(Converter.load(), store_sink, MessageArchive(engine))
    same_second = "20240501120000"
    original = adt("C1", "First", msh7=same_second)
    pipeline.process(parsed_envelope(original, seq=1))
    pipeline.process(parsed_envelope(adt("C2", "Second", msh7=same_second), seq=2))

    pipeline.process(parsed_envelope(original, seq=3))

    (current,) = store_sink.store.search("Patient", {"identifier": ["M1"]})
    assert current["name"][0]["family"] == "Second"


def test_remote_sinks_get_a_pending_row_in_the_same_commit(engine: Engine, store_sink: StoreSink) -> None:
    received = parsed_envelope(adt("C1", "Doe"))
    message = parse(received.raw.decode())
    store_sink.deliver(
        Converter.load().convert(message), source_of(received, message), received, "ADT", ("hapi", "lab")
    )

    with engine.connect() as conn:
        rows = conn.execute(select(sink_delivery.c.sink, sink_delivery.c.status, sink_delivery.c.received_at)).all()
    assert sorted(rows) == [("hapi", "pending", received.received_at), ("lab", "pending", received.received_at)]
    assert DeliveryStates(engine).summary() == {("hapi", "pending"): 1, ("lab", "pending"): 1}


def test_concurrent_messages_share_commits(engine: Engine, store_sink: StoreSink) -> None:
    bundles = [transaction(put(patient(f"p{i}", f"M{i}")), put(observation(f"o{i}", f"p{i}"))) for i in range(40)]
    results: list[Any] = [None] * len(bundles)

    def run(index: int) -> None:
        results[index] = store_sink.deliver(bundles[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bundles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert all(result is not None and [e.outcome for e in result] == ["created", "created"] for result in results)
    assert store_sink._commit.batches < len(bundles)  # noqa: SLF001 - some commits carried several


def test_a_failing_message_fails_alone_in_its_batch(engine: Engine, store_sink: StoreSink) -> None:
    fail_inserts_of(engine, "o-bad")
    good = [store_sink_delivery(transaction(put(observation(f"o{i}", "p1")))) for i in range(3)]
    bad = store_sink_delivery(transaction(put(observation("o-bad", "p1"))))

    outcomes = store_sink._apply_batch([good[0], bad, good[1], good[2]])  # noqa: SLF001 - one batch, on purpose

    assert isinstance(outcomes[1], DeliveryError)
    assert "rejected by test trigger" in str(outcomes[1]) or "SQLSTATE P0001" in str(outcomes[1])
    assert [getattr(o, "changed", None) for i, o in enumerate(outcomes) if i != 1] == [True, True, True]
    assert store_sink.store.read("Observation", "o-bad") is None
    assert store_sink.store.read("Observation", "o2") is not None


def store_sink_delivery(bundle: dict[str, Any]) -> Any:
    from gateway.deliver.store_sink import StoreDelivery
    from gateway.store.transaction import plan_changes

    return StoreDelivery(plan_changes(bundle))
