"""What the gateway's code calls to record a metric: one ``Recorder`` per process, or a
``NullRecorder`` whose methods do nothing when HL7GW_METRICS is off.

Labelled children are cached by the raw values they were asked for (``.labels()`` takes a lock
and builds a key each time), so recording is a dict lookup and an increment. The caches are
bounded too: past their size a value is labelled afresh each time, never remembered.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from gateway.metrics.labels import (
    IMPORT_OUTCOMES,
    INBOX_OUTCOMES,
    MLLP_REFUSALS,
    REPLAY_KINDS,
    SINK_OUTCOMES,
    SUBSCRIPTION_OUTCOMES,
    UNFINISHED_FRAME_REASONS,
    ErrorTypeLabels,
    MessageTypeLabels,
    SenderLabels,
    ack_code,
    err_code,
    letter_stage,
    one_of,
)

K = TypeVar("K", bound=Hashable)
#: Raw keys remembered per metric.
_CACHE_LIMIT = 4096


class _Children(Generic[K]):
    """The children of one labelled metric, by raw key; ``labels`` turns a key into label values."""

    __slots__ = ("metric", "labels", "cache")

    def __init__(self, metric: Any, labels: Callable[[K], tuple[str, ...]]):
        self.metric = metric
        self.labels = labels
        self.cache: dict[K, Any] = {}

    def __call__(self, key: K) -> Any:
        child = self.cache.get(key)
        if child is None:
            child = self.metric.labels(*self.labels(key))
            if len(self.cache) < _CACHE_LIMIT:
                self.cache[key] = child
        return child


class NullRecorder:
    """Records nothing: the instrumented code pays one method call."""

    enabled = False

    def use_mappings(self, supports: Callable[[str, str], bool] | None) -> None: ...

    def received(self, sender: str, message_type: str) -> None: ...

    def ack_sent(self, code: str) -> None: ...

    def duplicate(self, sender: str) -> None: ...

    def rejected(self, code: str) -> None: ...

    def connections_open(self, count: int) -> None: ...

    def connection_refused(self, reason: str) -> None: ...

    def unfinished_frame(self, reason: str) -> None: ...

    def queue_volatile(self, volatile: bool) -> None: ...

    def stage(self, stage: str, seconds: float) -> None: ...

    def converted(self, message_type: str) -> None: ...

    def ack_to_stored(self, seconds: float) -> None: ...

    def dead_letter(self, stage: str, error_type: str) -> None: ...

    def replayed(self, kind: str, count: int = 1) -> None: ...

    def sink_delivery(self, sink: str, outcome: str) -> None: ...

    def sink_request(self, sink: str, seconds: float) -> None: ...

    def subscription_notification(self, subscription: str, outcome: str, count: int = 1) -> None: ...

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None: ...

    def audit_pending(self, count: int) -> None: ...

    def audit_written(self, count: int = 1) -> None: ...

    def audit_dropped(self, count: int = 1) -> None: ...

    def imported(self, outcome: str, count: int = 1) -> None: ...

    def import_batch_mismatched(self) -> None: ...

    def inbox_file(self, outcome: str) -> None: ...


class Recorder(NullRecorder):
    """Records into the catalogue (gateway/metrics/catalogue.py) with bounded labels."""

    enabled = True

    def __init__(self, supports: Callable[[str, str], bool] | None = None):
        from gateway.metrics import catalogue as c

        self._c = c
        self.senders = SenderLabels()
        self.error_types = ErrorTypeLabels()
        self.use_mappings(supports)
        self._acks: _Children[str] = _Children(c.ACKS_SENT, lambda code: (ack_code(code),))
        self._duplicates: _Children[str] = _Children(c.DUPLICATES, lambda sender: (self.senders(sender),))
        self._rejected: _Children[str] = _Children(c.INTAKE_REJECTIONS, lambda code: (err_code(code),))
        self._stages: _Children[str] = _Children(c.STAGE_DURATION, lambda stage: (stage,))
        self._letters: _Children[tuple[str, str]] = _Children(
            c.DEAD_LETTERS, lambda key: (letter_stage(key[0]), self.error_types(key[1]))
        )
        self._replayed: _Children[str] = _Children(c.MESSAGES_REPLAYED, lambda kind: (one_of(kind, REPLAY_KINDS),))
        self._deliveries: _Children[tuple[str, str]] = _Children(
            c.SINK_DELIVERIES, lambda key: (key[0], one_of(key[1], SINK_OUTCOMES))
        )
        self._sink_requests: _Children[str] = _Children(c.SINK_REQUEST_DURATION, lambda sink: (sink,))
        # Subscription ids are bounded by the number of subscriptions an operator made.
        self._notifications: _Children[tuple[str, str]] = _Children(
            c.SUBSCRIPTION_NOTIFICATIONS, lambda key: (key[0][:64], one_of(key[1], SUBSCRIPTION_OUTCOMES))
        )
        self._http: _Children[tuple[str, str, int]] = _Children(
            c.HTTP_REQUESTS, lambda key: (key[0], key[1], str(key[2]))
        )
        self._http_time: _Children[tuple[str, str]] = _Children(c.HTTP_REQUEST_DURATION, lambda key: key)
        self._ack_to_stored = c.ACK_TO_STORED
        self._imported: _Children[str] = _Children(
            c.IMPORT_MESSAGES, lambda outcome: (one_of(outcome, IMPORT_OUTCOMES),)
        )
        self._inbox: _Children[str] = _Children(c.INBOX_FILES, lambda outcome: (one_of(outcome, INBOX_OUTCOMES),))
        self._connections = c.MLLP_CONNECTIONS_OPEN
        self._refused: _Children[str] = _Children(
            c.MLLP_CONNECTIONS_REFUSED, lambda reason: (one_of(reason, MLLP_REFUSALS),)
        )
        self._unfinished: _Children[str] = _Children(
            c.MLLP_UNFINISHED_FRAMES, lambda reason: (one_of(reason, UNFINISHED_FRAME_REASONS),)
        )

    def use_mappings(self, supports: Callable[[str, str], bool] | None) -> None:
        """Message types are named when ``supports(code, trigger)``, else "other"."""
        c = self._c
        self.message_types = types = MessageTypeLabels(supports)
        self._received: _Children[tuple[str, str]] = _Children(
            c.MESSAGES_RECEIVED, lambda key: (self.senders(key[0]), types(key[1]))
        )
        self._converted: _Children[str] = _Children(c.MESSAGES_CONVERTED, lambda mt: (types(mt),))

    def received(self, sender: str, message_type: str) -> None:
        self._received((sender, message_type)).inc()

    def ack_sent(self, code: str) -> None:
        self._acks(code).inc()

    def duplicate(self, sender: str) -> None:
        self._duplicates(sender).inc()

    def rejected(self, code: str) -> None:
        self._rejected(code).inc()

    def connections_open(self, count: int) -> None:
        self._connections.set(count)

    def connection_refused(self, reason: str) -> None:
        self._refused(reason).inc()

    def unfinished_frame(self, reason: str) -> None:
        self._unfinished(reason).inc()

    def queue_volatile(self, volatile: bool) -> None:
        self._c.QUEUE_VOLATILE.set(1 if volatile else 0)

    def stage(self, stage: str, seconds: float) -> None:
        self._stages(stage).observe(seconds)

    def converted(self, message_type: str) -> None:
        self._converted(message_type).inc()

    def ack_to_stored(self, seconds: float) -> None:
        self._ack_to_stored.observe(max(0.0, seconds))

    def dead_letter(self, stage: str, error_type: str) -> None:
        self._letters((stage, error_type)).inc()

    def replayed(self, kind: str, count: int = 1) -> None:
        if count:
            self._replayed(kind).inc(count)

    def sink_delivery(self, sink: str, outcome: str) -> None:
        self._deliveries((sink, outcome)).inc()

    def sink_request(self, sink: str, seconds: float) -> None:
        self._sink_requests(sink).observe(seconds)

    def subscription_notification(self, subscription: str, outcome: str, count: int = 1) -> None:
        if count:
            self._notifications((subscription, outcome)).inc(count)

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._http((route, method, status)).inc()
        self._http_time((route, method)).observe(seconds)

    def audit_pending(self, count: int) -> None:
        self._c.AUDIT_EVENTS_PENDING.set(count)

    def audit_written(self, count: int = 1) -> None:
        self._c.AUDIT_EVENTS_WRITTEN.inc(count)

    def audit_dropped(self, count: int = 1) -> None:
        self._c.AUDIT_EVENTS_DROPPED.inc(count)

    def imported(self, outcome: str, count: int = 1) -> None:
        if count:
            self._imported(outcome).inc(count)

    def import_batch_mismatched(self) -> None:
        self._c.IMPORT_BATCHES_MISMATCHED.inc()

    def inbox_file(self, outcome: str) -> None:
        self._inbox(outcome).inc()


_current: NullRecorder | None = None


def configure(enabled: bool) -> NullRecorder:
    """This process's recorder from now on (call before the components are built: they keep it)."""
    global _current
    _current = Recorder() if enabled else NullRecorder()
    return _current


def recorder() -> NullRecorder:
    """This process's recorder: the configured one, else a recording one (tests, tools)."""
    global _current
    if _current is None:
        _current = Recorder()
    return _current
