"""The listener's limits (HL7GW_MLLP_* settings) and counters, shared by the server and its connections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-listener limits (HL7GW_MLLP_* settings)."""

    max_message_bytes: int = 16 * 1024 * 1024
    #: Seconds a started frame may take to finish (also the TLS handshake timeout).
    frame_timeout_s: float = 30.0
    #: Seconds without a byte after which a connection with nothing in flight is closed; 0: never.
    idle_timeout_s: float = 3600.0
    max_connections: int = 500
    require_trailing_cr: bool = False
    #: Frames read but not yet answered on one connection before reading pauses.
    max_outstanding: int = 1024


@dataclass
class ListenerStats:
    connections: int = 0
    open_connections: int = 0
    refused_connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    acks_received: int = 0
    storage_failures: int = 0
    discarded_bytes: int = 0
    oversized: int = 0
    frame_timeouts: int = 0
    idle_timeouts: int = 0
    commit_acks_received: int = 0
    empty_frames: int = 0
    #: Frames that held a batch, each answered by one batch acknowledgement.
    batch_frames: int = 0
