"""The record that travels the queue: one received message and where it came from."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field


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
    #: Stage to start processing at; replays may skip ahead.
    start_stage: str = "convert"
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["raw"] = base64.b64encode(self.raw).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Envelope":
        data = dict(data)
        data["raw"] = base64.b64decode(data["raw"])
        return cls(**data)
