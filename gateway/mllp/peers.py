"""Who may connect to the MLLP listener: the allow-list of source addresses and the number of
connections each address may hold (HL7GW_MLLP_ALLOWED_PEERS, HL7GW_MLLP_MAX_CONNECTIONS_PER_PEER)."""

from __future__ import annotations

import ipaddress
from collections import Counter

from gateway.config.values import Network

#: Why a connection was closed at once (the ``reason`` of hl7gw_mllp_connections_refused_total).
FULL, STOPPING, PEER_LIMIT, NOT_ALLOWED = "max-connections", "stopping", "peer-limit", "not-allowed"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def peer_address(host: str) -> Address | None:
    """The source address of a peer as the socket gives it; an IPv4-mapped IPv6 address (a
    dual-stack listener) is its IPv4 address, an IPv6 zone is dropped. None: not an IP (a Unix socket)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class PeerGate:
    """Admits a connection when its address is allowed and holds fewer than its share of connections."""

    def __init__(self, allowed: tuple[Network, ...] = (), per_peer: int = 50):
        if per_peer < 1:
            raise ValueError("per_peer must be positive")
        self.allowed = allowed
        self.per_peer = per_peer
        self.open: Counter[Address | None] = Counter()

    def refusal(self, address: Address | None) -> str | None:
        """Why a connection from ``address`` may not be opened, or None when it may."""
        if self.allowed and (address is None or not any(address in network for network in self.allowed)):
            return NOT_ALLOWED
        if self.open[address] >= self.per_peer:
            return PEER_LIMIT
        return None

    def opened(self, address: Address | None) -> None:
        self.open[address] += 1

    def closed(self, address: Address | None) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
