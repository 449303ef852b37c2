"""The stages a received message goes through in a worker: decode, parse, convert, validate, deliver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, TypeVar

from gateway.convert.engine import Converter
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.errors import GatewayError, StageCrash
from gateway.hl7.charset import decode_message
from gateway.hl7.message import Message, parse
from gateway.store.messages import MessageArchive
from gateway.validate import validate_bundle

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_stage(stage: str, fn: Callable[..., T], *args: object) -> T:
    """Call one stage; an unexpected exception becomes a StageCrash naming the stage."""
    try:
        return fn(*args)
    except GatewayError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else is tagged, not swallowed
        raise StageCrash(stage, exc) from exc


@dataclass
class Pipeline:
    converter: Converter
    sink: StoreSink
    archive: MessageArchive

    def process(self, envelope: Envelope) -> None:
        """Run every stage; raises a GatewayError (with its stage) when one fails."""
        self.archive.record_attempt(envelope)
        text = run_stage("parse", decode_message, envelope.raw)
        message: Message = run_stage("parse", parse, text)
        bundle = run_stage("convert", self.converter.convert, message)
        run_stage("validate", validate_bundle, bundle)
        result = run_stage("deliver", self.sink.deliver, bundle)
        self.archive.mark(envelope.id, "processed", _summary(result))
        log.debug("processed %s from %s", envelope.control_id, envelope.sender)


def _summary(result: object) -> str:
    entries = getattr(result, "entries", None)
    if entries is None:
        return str(result)[:4000]
    return ", ".join(f"{e.type}/{e.id} v{e.version_id} {e.outcome}" for e in entries)[:4000]
