"""The stages a received message goes through in a worker: decode, parse, convert, validate, deliver.

Delivery is two steps: the built-in store commits the message's resources together with its
archive row and its pending remote deliveries (gateway/deliver/store_sink.py); then the message is
handed to each remote sink's own queue (gateway/deliver/fanout.py), so a slow or failing remote
server never holds up the store or the other sinks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gateway.convert.runtime.engine import Converter
from gateway.deliver.source import source_of
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope, Kind
from gateway.errors import DeliveryError, GatewayError, RejectedAtIntake, StageCrash, as_unavailable
from gateway.hl7.charset import decode_message
from gateway.hl7.message import Message, parse
from gateway.journal.messages import MessageArchive
from gateway.metrics import NullRecorder, recorder
from gateway.stages import Stage
from gateway.store.ordering import Source
from gateway.validate import validate_bundle

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Envelope meta of a replayed ``deliver:<sink>`` letter: deliver to that remote sink only.
REPLAY_SINK = "replay_sink"
#: Envelope meta of a reprocessed message: the operator job that ran it again.
REPROCESS_JOB = "job"
#: Envelope peers of messages queued again by operators (gateway/services/replay.py, jobs.py):
#: their receive time is the first attempt's, so they say nothing of today's latency.
_REQUEUED = frozenset({"replay", "reprocess"})
_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def credit_job(bundle: dict[str, Any], job_id: str) -> None:
    """The message's Provenance (the one naming its source message) also names the reprocess job
    that ran it through the current mappings: an agent, by the job's identifier."""
    agent = {
        "type": {"coding": [{"system": _PARTICIPANT, "code": "assembler", "display": "Assembler"}]},
        "who": {"identifier": {"system": "urn:hl7gw:job", "value": job_id}, "display": f"reprocess job {job_id}"},
    }
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Provenance" and any(
            e.get("role") == "source" for e in resource.get("entity", [])
        ):
            resource.setdefault("agent", []).append(agent)


def run_stage(stage: Stage, fn: Callable[..., T], *args: object) -> T:
    """Call one stage; an outage of the database or Redis becomes StoreUnavailable/QueueUnavailable,
    any other unexpected exception a StageCrash naming the stage."""
    try:
        return fn(*args)
    except GatewayError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is tagged, not swallowed
        outage = as_unavailable(exc, stage)
        if outage is not None:
            raise outage from exc
        raise StageCrash(stage, exc) from exc


class Fanout(Protocol):
    """Hands a stored message to the remote sinks' queues."""

    @property
    def sink_names(self) -> tuple[str, ...]: ...

    def enqueue(
        self, envelope: Envelope, source: Source, bundle: dict[str, Any], only: tuple[str, ...] | None = None
    ) -> None: ...


@dataclass
class Pipeline:
    converter: Converter
    sink: StoreSink
    archive: MessageArchive
    fanout: Fanout | None = None
    metrics: NullRecorder = field(default_factory=recorder)

    def __post_init__(self) -> None:
        self.metrics.use_mappings(self.converter.supports)

    def process(self, envelope: Envelope, *, live: bool = True) -> None:
        """Run every stage; raises a GatewayError (with its stage) when one fails. ``live``: False
        for a message from the import queue, whose wait there (paced, behind live traffic) is no
        part of the live ACK-to-stored latency."""
        if envelope.kind == Kind.REJECTED:  # answered AR/AE at intake: a dead letter as it is
            raise RejectedAtIntake(envelope.meta.get("reason") or "rejected at intake")
        if envelope.kind == Kind.ACK:  # an incoming acknowledgement: archived, never converted
            run_stage(
                Stage.ARCHIVE, self.archive.record_outcome, envelope, "ack", envelope.meta.get("message_type", "ACK")
            )
            log.info("archived an incoming acknowledgement", extra={"outcome": "ack-archived"})
            return
        metrics, clock = self.metrics, time.perf_counter
        started = clock()
        text = run_stage(Stage.PARSE, decode_message, envelope.raw)
        message: Message = run_stage(Stage.PARSE, parse, text)
        parsed = clock()
        metrics.stage("parse", parsed - started)
        conversion = run_stage(Stage.CONVERT, self.converter.convert_noted, message)
        bundle = conversion.bundle
        converted = clock()
        metrics.stage("convert", converted - parsed)
        code, trigger, _structure = message.message_type
        metrics.converted(f"{code}^{trigger}")
        if envelope.meta.get(REPROCESS_JOB):
            credit_job(bundle, envelope.meta[REPROCESS_JOB])
        run_stage(Stage.VALIDATE, validate_bundle, bundle)
        validated = clock()
        metrics.stage("validate", validated - converted)
        source = run_stage(Stage.DELIVER, source_of, envelope, message, self.converter.zone_for(message))
        sinks = self._sinks_for(envelope)
        message_type = "^".join(part for part in message.message_type if part)
        notes = tuple(conversion.notes)
        run_stage(Stage.DELIVER, self.sink.deliver, bundle, source, envelope, message_type, sinks, notes)
        metrics.stage("store", clock() - validated)
        if live and envelope.peer not in _REQUEUED:
            metrics.ack_to_stored(time.time() - envelope.received_at / 1000)
        if self.fanout is not None and sinks:
            run_stage(Stage.DELIVER, self.fanout.enqueue, envelope, source, bundle, sinks)
        # The worker's one line for the message (the log context names it); a failure's is the
        # failure policy's (gateway/services/failures.py).
        log.info(
            "stored %s: %d resource(s)%s",
            message_type,
            len(bundle.get("entry", ())),
            f", queued for {len(sinks)} remote sink(s)" if self.fanout is not None and sinks else "",
            extra={"outcome": "stored", "message_type": message_type},
        )

    def _sinks_for(self, envelope: Envelope) -> tuple[str, ...]:
        """The remote sinks to deliver to: all, or the one a replayed sink letter names
        (gateway/services/replay.py), which must still be configured."""
        configured = self.fanout.sink_names if self.fanout else ()
        wanted = envelope.meta.get(REPLAY_SINK)
        if not wanted:
            return configured
        if wanted not in configured:
            raise DeliveryError(f"the replayed letter's sink {wanted!r} is not configured (HL7GW_SINKS)")
        return (wanted,)
