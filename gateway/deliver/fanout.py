"""Hand a stored message to every remote sink's own queue (``sink.<name>``).

Each sink has a queue and worker threads of its own, so a sink that is down or slow only delays
its own messages: the built-in store and the other sinks keep flowing (no head-of-line blocking).
The queue message carries the Bundle and the message's source (for the ordering check at send
time); the delivery state row was committed with the resources (gateway/store/deliveries.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import dramatiq
import redis
from dramatiq.broker import Broker
from dramatiq.errors import BrokerError

from gateway.envelope import Envelope
from gateway.errors import QueueUnavailable, describe
from gateway.sinkspec import SinkSpec
from gateway.store.ordering import Source


def actor_name(spec: SinkSpec) -> str:
    return f"deliver_to_{spec.name}"


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """What a sink queue carries: one message for one sink."""

    message_id: str
    sink: str
    received_at: int
    sender: str
    control_id: str
    seq: int
    #: The source timestamp, ISO format, naive UTC.
    source_time: str
    bundle: dict[str, Any]
    #: Failed attempts so far (for the backoff).
    attempts: int = 0

    @property
    def source(self) -> Source:
        return Source(self.message_id, self.sender, self.control_id, self.seq, datetime.fromisoformat(self.source_time))

    def next_attempt(self) -> SinkMessage:
        return replace(self, attempts=self.attempts + 1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SinkMessage:
        return cls(**data)

    @classmethod
    def of(cls, spec: SinkSpec, envelope: Envelope, source: Source, bundle: dict[str, Any]) -> SinkMessage:
        return cls(
            message_id=envelope.id,
            sink=spec.name,
            received_at=envelope.received_at,
            sender=source.sender,
            control_id=source.control_id,
            seq=source.seq,
            source_time=source.time.isoformat(),
            bundle=bundle,
        )


class SinkFanout:
    """Enqueues messages on the sink queues of ``broker``."""

    def __init__(self, broker: Broker, specs: tuple[SinkSpec, ...]):
        self.broker = broker
        self.specs = {spec.name: spec for spec in specs}

    @property
    def sink_names(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def enqueue(
        self, envelope: Envelope, source: Source, bundle: dict[str, Any], only: tuple[str, ...] | None = None
    ) -> None:
        """Queue the message for every sink (or those ``only`` names); raises QueueUnavailable when
        the queue cannot take it (the worker waits for Redis and runs the pipeline again: the store
        finds nothing to change, the sinks get the message)."""
        try:
            for spec in self.specs.values():
                if only is None or spec.name in only:
                    self.send(SinkMessage.of(spec, envelope, source, bundle))
        except (redis.RedisError, BrokerError) as exc:
            raise QueueUnavailable(f"could not queue the message for remote sinks: {describe(exc)}") from exc

    def send(self, message: SinkMessage, delay_ms: int | None = None) -> None:
        """Put ``message`` on its sink's queue, now or after ``delay_ms`` (below 7 days)."""
        spec = self.specs[message.sink]
        queued: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=spec.queue,
            actor_name=actor_name(spec),
            args=(message.to_json(),),
            kwargs={},
            options={},
        )
        self.broker.enqueue(queued, delay=delay_ms if delay_ms and delay_ms > 0 else None)
