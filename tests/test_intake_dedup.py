"""Duplicate window at intake: a resent message gets its ACK again but is enqueued once."""

from __future__ import annotations

import asyncio
import time

import redis

from gateway.keys import Keys
from gateway.queue.intake import Receipt
from tests.support.queue import queued, queued_envelope, submit_all

RAW = b"MSH|^~\\&|App|Fac|GW|GWF|20240101||ADT^A01|C-1|P|2.5\rPID|1||42\r"


def counters(redis_url: str, namespace: str) -> tuple[int, int]:
    keys = Keys(namespace)
    client = redis.Redis.from_url(redis_url)
    return int(client.get(keys.duplicates()) or 0), int(client.get(keys.control_id_reused()) or 0)


def test_resent_message_is_a_duplicate(redis_url: str, redis_namespace: str) -> None:
    first = asyncio.run(submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=RAW)]))
    again = asyncio.run(submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=RAW)]))
    assert first == [Receipt(1)] and again == [Receipt(1, duplicate=True)]
    assert len(queued(redis_url, redis_namespace)) == 1
    assert counters(redis_url, redis_namespace) == (1, 0)


def test_duplicates_within_one_batch(redis_url: str, redis_namespace: str) -> None:
    envelopes = [queued_envelope(control_id="C-1", raw=RAW) for _ in range(3)] + [
        queued_envelope(control_id="C-2", raw=RAW)
    ]
    receipts = asyncio.run(submit_all(redis_url, redis_namespace, envelopes))
    assert receipts == [Receipt(1), Receipt(1, True), Receipt(1, True), Receipt(2)]
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["C-1", "C-2"]


def test_the_key_is_sender_and_control_id(redis_url: str, redis_namespace: str) -> None:
    envelopes = [
        queued_envelope(sender="App|Fac", control_id="C-1", raw=RAW),
        queued_envelope(sender="App|Other", control_id="C-1", raw=RAW),
        queued_envelope(sender="Other|Fac", control_id="C-1", raw=RAW),
        queued_envelope(sender="App|Fac", control_id="C-2", raw=RAW),
        # "a|b" + "c" and "a" + "b|c" must not meet in one key.
        queued_envelope(sender="a|b", control_id="c", raw=RAW),
        queued_envelope(sender="a|b|c", control_id="", raw=RAW),
    ]
    receipts = asyncio.run(submit_all(redis_url, redis_namespace, envelopes))
    assert not any(r.duplicate for r in receipts)
    assert len(queued(redis_url, redis_namespace)) == 6


def test_same_control_id_with_other_content_is_not_dropped(redis_url: str, redis_namespace: str) -> None:
    # A sender that restarted its MSH-10 counter: the new message must not be lost as a "duplicate".
    other = RAW.replace(b"PID|1||42", b"PID|1||43")
    receipts = asyncio.run(
        submit_all(
            redis_url,
            redis_namespace,
            [queued_envelope(control_id="C-1", raw=RAW), queued_envelope(control_id="C-1", raw=other)],
        )
    )
    assert receipts == [Receipt(1), Receipt(2, control_id_reused=True)]
    assert len(queued(redis_url, redis_namespace)) == 2
    assert counters(redis_url, redis_namespace) == (0, 1)
    # The newer content is what a later resend is compared with.
    again = asyncio.run(submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=other)]))
    assert again == [Receipt(2, duplicate=True)]


def test_window_expires(redis_url: str, redis_namespace: str) -> None:
    first = asyncio.run(
        submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=RAW)], dedup_window_s=1)
    )
    key = Keys(redis_namespace).dedup("App|Fac", "C-1")
    assert 0 < redis.Redis.from_url(redis_url).pttl(key) <= 1000
    time.sleep(1.2)
    later = asyncio.run(
        submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=RAW)], dedup_window_s=1)
    )
    assert first == [Receipt(1)] and later == [Receipt(2)]


def test_default_window_is_seven_days(redis_url: str, redis_namespace: str) -> None:
    asyncio.run(submit_all(redis_url, redis_namespace, [queued_envelope(control_id="C-1", raw=RAW)]))
    ttl = redis.Redis.from_url(redis_url).ttl(Keys(redis_namespace).dedup("App|Fac", "C-1"))
    assert 7 * 86_400 - 60 < ttl <= 7 * 86_400


def test_no_window_no_check(redis_url: str, redis_namespace: str) -> None:
    envelopes = [queued_envelope(control_id="C-1", raw=RAW) for _ in range(2)]
    receipts = asyncio.run(submit_all(redis_url, redis_namespace, envelopes, dedup_window_s=0))
    assert receipts == [Receipt(1), Receipt(2)]
