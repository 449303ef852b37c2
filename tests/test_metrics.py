"""The metrics library: bounded labels, the recorder and its off switch, the settings, the
scrape-time collector against a real Redis (and without one), and what the intake writes for it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway.backlog import senders_last_seen
from gateway.config import Role, load_settings, parse_tokens
from gateway.errors import ConfigError
from gateway.keys import Keys
from gateway.metrics import NullRecorder, Recorder, configure, recorder
from gateway.metrics.collector import GatewayCollector, ScrapeSources
from gateway.metrics.exposition import registry, render
from gateway.metrics.labels import (
    OTHER,
    ErrorTypeLabels,
    MessageTypeLabels,
    SenderLabels,
    ack_code,
    err_code,
    letter_stage,
)
from gateway.services.embedded_redis import free_port
from tests.support.queue import queued_envelope, submit_all

# -- labels ----------------------------------------------------------------------------------------


@given(st.lists(st.text(max_size=30), max_size=60))
def test_senders_beyond_the_cap_are_other_and_a_named_one_stays_named(senders: list[str]) -> None:
    labels = SenderLabels(limit=5)
    first = [labels(sender) for sender in senders]
    assert len(set(first) - {OTHER}) <= 5
    assert [labels(sender) for sender in senders] == first  # stable
    for sender, label in zip(senders, first):
        assert label in (OTHER, sender[:64] or "unknown")


def test_the_first_senders_are_named_in_order() -> None:
    labels = SenderLabels(limit=2)
    assert [labels(s) for s in ["A|1", "B|1", "C|1", "A|1"]] == ["A|1", "B|1", OTHER, "A|1"]


@given(st.text(max_size=40))
def test_a_message_type_label_is_a_supported_type_or_other(value: str) -> None:
    supported = {("ADT", "A01"), ("ORU", "R01")}
    labels = MessageTypeLabels(lambda code, trigger: (code, trigger) in supported)
    label = labels(value)
    assert label == OTHER or (label == value and tuple(value.split("^")) in supported)


def test_message_types_without_a_mapping_or_with_field_values_are_other() -> None:
    labels = MessageTypeLabels(lambda code, trigger: code == "ADT" and trigger == "A01")
    assert labels("ADT^A01") == "ADT^A01"
    assert labels("ADT^A99") == OTHER
    assert labels("Smith^John") == OTHER  # never a value that is not a code
    unchecked = MessageTypeLabels(None, limit=2)
    assert [unchecked(t) for t in ["ADT^A01", "ORU^R01", "SIU^S12", "ADT^A01"]] == [
        "ADT^A01",
        "ORU^R01",
        OTHER,
        "ADT^A01",
    ]


def test_codes_and_stages_are_bounded() -> None:
    assert [ack_code(c) for c in ["AA", "CR", "XX"]] == ["AA", "CR", OTHER]
    assert [err_code(c) for c in ["207", "0", "2071", "abc", ""]] == ["207", "0", OTHER, OTHER, OTHER]
    assert [letter_stage(s) for s in ["convert", "deliver:lab", "intake", "bogus"]] == [
        "convert",
        "sink",
        "intake",
        OTHER,
    ]
    errors = ErrorTypeLabels(limit=1)
    assert errors("ParseError") == "ParseError" and errors("SinkMaxAgeExceeded") == "SinkMaxAgeExceeded"
    assert errors("KeyError") == "KeyError"
    assert errors("ValueError") == OTHER  # beyond the foreign names allowed
    assert errors("not a name") == OTHER


# -- the recorder ----------------------------------------------------------------------------------


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_recorder_counts_with_bounded_labels_and_the_null_recorder_counts_nothing() -> None:
    sender = f"METRICS-{time.monotonic_ns()}|TEST"
    on = Recorder(lambda code, trigger: code == "ADT")
    off = NullRecorder()
    before = _value("hl7gw_messages_received_total", sender=sender, message_type="ADT^A01")
    other = _value("hl7gw_messages_received_total", sender=sender, message_type=OTHER)
    letters = _value("hl7gw_dead_letters_total", stage="sink", error_type="SinkMaxAgeExceeded")
    for recording in (on, off):
        recording.received(sender, "ADT^A01")
        recording.received(sender, "ZZZ^Z01")
        recording.dead_letter("deliver:lab", "SinkMaxAgeExceeded")
        recording.stage("parse", 0.001)
    assert _value("hl7gw_messages_received_total", sender=sender, message_type="ADT^A01") == before + 1
    assert _value("hl7gw_messages_received_total", sender=sender, message_type=OTHER) == other + 1
    assert _value("hl7gw_dead_letters_total", stage="sink", error_type="SinkMaxAgeExceeded") == letters + 1


def test_off_configures_a_recorder_that_records_nothing() -> None:
    try:
        assert configure(False).enabled is False
        assert isinstance(recorder(), NullRecorder) and not isinstance(recorder(), Recorder)
        assert configure(True).enabled is True
    finally:
        configure(True)


# -- settings and tokens ---------------------------------------------------------------------------


def test_metrics_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings().prometheus
    assert defaults.enabled and defaults.port is None and defaults.silence_s == 3600
    monkeypatch.setenv("HL7GW_METRICS", "off")
    monkeypatch.setenv("HL7GW_METRICS_PORT", "9464")
    monkeypatch.setenv("HL7GW_SENDER_SILENCE_S", "900")
    monkeypatch.setenv("HL7GW_SENDER_SILENCE", "LAB|HOSP=60, ADT|WARD=7200.5")
    section = load_settings().prometheus
    assert not section.enabled and section.port == 9464 and section.silence_s == 900
    assert dict(section.sender_silence_s) == {"LAB|HOSP": 60.0, "ADT|WARD": 7200.5}


@pytest.mark.parametrize("value", ["LAB=60", "LAB|HOSP=soon", "LAB|HOSP=0", "LAB|HOSP"])
def test_a_bad_sender_silence_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HL7GW_SENDER_SILENCE", value)
    with pytest.raises(ConfigError, match="HL7GW_SENDER_SILENCE"):
        load_settings()


def test_metrics_is_a_role_of_its_own() -> None:
    (token,) = parse_tokens("prometheus:scrape-secret:metrics")
    assert token.role is Role.metrics and token.name == "prometheus"


# -- the scrape-time collector ---------------------------------------------------------------------


def _families(collector: GatewayCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    body, _ = render(registry([collector]))
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _sources(client: redis.Redis | None, keys: Keys, data_dir: Path, letters: int | None = 3) -> ScrapeSources:
    return ScrapeSources(
        keys=keys,
        redis_client=client,
        sinks=(("lab", "sink.lab"), ("hapi", "sink.hapi"), ("spare", "sink.spare")),
        heartbeat_timeout_ms=15_000,
        breaker_threshold=5,
        silence_s=3600,
        sender_silence_s={"LAB|HOSP": 60, "QUIET|WARD": 120},
        data_dir=data_dir,
        open_dead_letters=(lambda: letters) if letters is not None else None,
        version="9.9.9",
    )


def test_the_collector_reads_senders_breakers_queues_and_disk(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(redis_namespace)
    now_ms = int(time.time() * 1000)
    client.hset(keys.sender_last_seen(), mapping={"LAB|HOSP": now_ms - 5_000, "ADT|WARD": now_ms})
    client.hset(keys.sink_breaker("lab"), mapping={"failures": 7, "open_until": now_ms + 60_000})
    client.hset(keys.sink_breaker("hapi"), mapping={"failures": 5, "open_until": now_ms - 1})
    client.zadd(keys.heartbeats(), {"worker-1": now_ms})

    found = _families(GatewayCollector(_sources(client, keys, tmp_path)))

    assert found["hl7gw_build_info"] == {(("version", "9.9.9"),): 1}
    assert found["hl7gw_redis_up"] == {(): 1} and found["hl7gw_redis_uptime_seconds"][()] >= 0
    assert found["hl7gw_workers_alive"] == {(): 1}
    assert found["hl7gw_sender_last_message_timestamp_seconds"] == {
        (("sender", "LAB|HOSP"),): (now_ms - 5_000) / 1000,
        (("sender", "ADT|WARD"),): now_ms / 1000,
    }
    assert found["hl7gw_sender_silence_threshold_seconds"] == {
        (("sender", "LAB|HOSP"),): 60,
        (("sender", "ADT|WARD"),): 3600,
        (("sender", "QUIET|WARD"),): 120,  # configured, not heard yet: the alert fires on absence
    }
    assert found["hl7gw_sink_breaker_state"] == {
        (("sink", "lab"),): 2,
        (("sink", "hapi"),): 1,
        (("sink", "spare"),): 0,
    }
    queues = {dict(labels)["queue"] for labels in found["hl7gw_queue_depth"]}
    assert queues == {"hl7", "hl7-replay", "hl7-import", "sink.lab", "sink.hapi", "sink.spare"}
    assert set(found) >= {"hl7gw_queue_oldest_age_seconds", "hl7gw_queue_delayed", "hl7gw_queue_in_flight"}
    assert found["hl7gw_dead_letters_open"] == {(): 3}
    assert found["hl7gw_data_dir_free_bytes"][()] > 0
    assert found["hl7gw_data_dir_size_bytes"][()] >= found["hl7gw_data_dir_free_bytes"][()]
    assert found["hl7gw_scrape_errors_total"][(("part", "redis"),)] == 0


def test_without_redis_the_scrape_still_answers_with_the_rest(tmp_path: Path) -> None:
    down = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=1, socket_connect_timeout=1)

    def broken() -> int:
        raise RuntimeError("no database")

    sources = _sources(down, Keys("nowhere"), tmp_path)
    sources.open_dead_letters = broken
    collector = GatewayCollector(sources)
    _families(collector)
    found = _families(collector)

    assert found["hl7gw_redis_up"] == {(): 0}
    assert found["hl7gw_scrape_errors_total"][(("part", "redis"),)] == 2
    assert found["hl7gw_scrape_errors_total"][(("part", "database"),)] == 2
    assert "hl7gw_queue_depth" not in found and "hl7gw_dead_letters_open" not in found
    assert found["hl7gw_build_info"] and found["hl7gw_data_dir_free_bytes"][()] > 0


# -- the intake keeps each sender's last-seen time ---------------------------------------------------


def test_the_intake_records_when_each_sender_was_last_heard(redis_url: str, redis_namespace: str) -> None:
    before = time.time()
    envelopes = [
        queued_envelope(sender="LAB|HOSP", control_id="1"),
        queued_envelope(sender="ADT|WARD", control_id="1"),
        queued_envelope(sender="KEPT|ONLY", control_id="9", kind="rejected"),  # not a message: not counted
    ]
    asyncio.run(submit_all(redis_url, redis_namespace, envelopes))
    seen = senders_last_seen(redis.Redis.from_url(redis_url), Keys(redis_namespace))
    assert set(seen) == {"LAB|HOSP", "ADT|WARD"}
    assert all(before - 1 <= when <= time.time() + 1 for when in seen.values())
    # A duplicate is the sender speaking too: its time moves on.
    time.sleep(0.01)
    asyncio.run(submit_all(redis_url, redis_namespace, [queued_envelope(sender="LAB|HOSP", control_id="1")]))
    later = senders_last_seen(redis.Redis.from_url(redis_url), Keys(redis_namespace))
    assert later["LAB|HOSP"] > seen["LAB|HOSP"] and later["ADT|WARD"] == seen["ADT|WARD"]
