"""The listener's limits (HL7GW_MLLP_* settings) and counters, shared by the server and its connections."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.values import Network


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection and per-listener limits (HL7GW_MLLP_* settings)."""

    max_message_bytes: int = 16 * 1024 * 1024
    #: Seconds a started frame may take to finish (also the TLS handshake timeout).
    frame_timeout_s: float = 30.0
    #: Seconds without a frame (a byte from a start block on) after which a connection with nothing
    #: in flight is closed; bytes outside a frame do not count. 0: never.
    idle_timeout_s: float = 3600.0
    max_connections: int = 500
    require_trailing_cr: bool = False
    #: Frames read but not yet answered on one connection before reading pauses.
    max_outstanding: int = 1024
    #: Connections one source address may hold open at once.
    max_connections_per_peer: int = 50
    #: Source addresses that may connect; empty: every address.
    allowed_peers: tuple[Network, ...] = ()


@dataclass
class ListenerStats:
    connections: int = 0
    open_connections: int = 0
    #: Connections closed at once: the listener full or stopping, the peer's limit, or not allowed.
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
    #: Frames left unfinished: cut off by a new start block, by the connection's close, or by the
    #: frame timeout (each kept as a dead letter when it holds more than whitespace).
    unfinished_frames: int = 0
    #: Frames that held a batch, each answered by one batch acknowledgement.
    batch_frames: int = 0
