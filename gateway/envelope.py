"""The record that travels the queue: one received message and where it came from."""

from __future__ import annotations

import base64
import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    """What a queued envelope is."""

    #: A message to process: parse, convert, validate, deliver.
    MESSAGE = "message"
    #: Answered AR/AE at intake and kept raw for operators: a dead letter as it is.
    REJECTED = "rejected"
    #: An incoming acknowledgement: kept in the archive, never converted.
    ACK = "ack"


#: Envelopes queued before ``kind`` existed said it with ``start_stage``.
_KIND_OF_START_STAGE = {"rejected": Kind.REJECTED, "ack": Kind.ACK}


@dataclass(frozen=True, slots=True)
class Envelope:
    #: Unique id of this received copy (a UUID string); the archive key.
    id: str
    #: Raw bytes exactly as received inside the MLLP frame.
    raw: bytes
    #: Milliseconds since the epoch when the gateway accepted the message.
    received_at: int
    #: "application|facility" from MSH-3 and MSH-4, the sender's identity for ordering and dedup.
    sender: str = ""
    #: MSH-10.
    control_id: str = ""
    #: Peer address of the connection, for operators.
    peer: str = ""
    #: Per-sender sequence number assigned at intake (0 when unknown).
    seq: int = 0
    kind: Kind = Kind.MESSAGE
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["raw"] = base64.b64encode(self.raw).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Envelope:
        data = dict(data)
        data["raw"] = base64.b64decode(data["raw"])
        start_stage = data.pop("start_stage", None)
        data["kind"] = Kind(data["kind"]) if "kind" in data else _KIND_OF_START_STAGE.get(start_stage, Kind.MESSAGE)
        return cls(**data)
