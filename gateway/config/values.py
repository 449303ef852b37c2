"""Parsers of the settings whose values have a syntax of their own: API tokens, their names and roles, time zones."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Role(StrEnum):
    reader = "reader"
    operator = "operator"
    admin = "admin"
    #: Reads /metrics and nothing else (a Prometheus server's token): outside the rank, so it
    #: never reaches FHIR data.
    metrics = "metrics"


#: Roles that read FHIR data and act on it, each allowed what those below it may do.
ROLE_RANK = {Role.reader: 0, Role.operator: 1, Role.admin: 2}
#: Roles that may read /metrics.
METRICS_ROLES = frozenset({Role.metrics, Role.admin})


def _zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)") from None


def host_zone(environ: Mapping[str, str], localtime: Path = Path("/etc/localtime")) -> str | None:
    """The IANA name of this machine's time zone: ``$TZ``, else the zone /etc/localtime links to,
    else /etc/timezone; "UTC" when none is set and the clock runs on UTC; None when unknown."""
    candidates = [environ.get("TZ", "").removeprefix(":")]
    try:
        link = os.readlink(localtime)
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    try:
        candidates.append(localtime.with_name("timezone").read_text().strip())
    except OSError:
        pass
    for name in filter(None, candidates):
        try:
            _zone(name)
        except ValueError:
            continue
        return name
    return "UTC" if time.timezone == 0 and not time.daylight else None


def parse_sender_zones(value: str) -> dict[str, str]:
    """Parse ``APP|FACILITY=Zone,...`` into {sender: zone}; raises ValueError naming the bad entry."""
    zones: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        sender, sep, zone = entry.rpartition("=")
        if not sep or "|" not in sender:
            raise ValueError(f"entry {entry!r} is not APPLICATION|FACILITY=Zone")
        _zone(zone.strip())
        zones[sender.strip()] = zone.strip()
    return zones


#: What becomes of a message with a segment that fits nowhere in its structure (docs/mappings.md).
UNPLACED_POLICIES = ("reject", "note")


def parse_sender_seconds(value: str) -> dict[str, float]:
    """Parse ``APP|FACILITY=seconds,...`` into {sender: seconds}; raises ValueError naming the bad entry."""
    found: dict[str, float] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        sender, sep, seconds = entry.rpartition("=")
        try:
            number = float(seconds)
        except ValueError:
            number = -1.0
        if not sep or "|" not in sender or not number > 0:
            raise ValueError(f"entry {entry!r} is not APPLICATION|FACILITY=seconds (a number above 0)")
        found[sender.strip()] = number
    return found


def parse_sender_policies(value: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Parse ``APP|FACILITY=policy,...`` into {sender: policy}; raises ValueError naming the bad entry."""
    policies: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        sender, sep, policy = entry.rpartition("=")
        if not sep or "|" not in sender or policy.strip() not in allowed:
            raise ValueError(f"entry {entry!r} is not APPLICATION|FACILITY={'|'.join(allowed)}")
        policies[sender.strip()] = policy.strip()
    return policies


#: An address range of ``HL7GW_MLLP_ALLOWED_PEERS``.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """``HL7GW_MLLP_ALLOWED_PEERS``: CIDRs or single addresses, IPv4 or IPv6, comma-separated;
    raises ValueError naming the bad entry (a range with host bits set too: the mask was mistyped)."""
    networks: list[Network] = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError:
            try:
                meant = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry[:80]!r} is not an IPv4 or IPv6 address or CIDR range") from None
            raise ValueError(f"{entry!r} has host bits set; did you mean {meant}?") from None
    return tuple(dict.fromkeys(networks))


#: A token's name: what audit records and logs call the caller (never the token itself).
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The name of the one token in the admin token file.
ADMIN_TOKEN_FILE_NAME = "admin-token-file"


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One entry of HL7GW_API_TOKENS; its repr leaves the token out."""

    name: str
    token: str = field(repr=False)
    role: Role


def legacy_token_name(token: str) -> str:
    """The name of a ``token:role`` entry: a short digest, which tells callers apart without revealing the token."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]


#: An origin (RFC 6454): scheme, host and an optional port, nothing after.
_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def parse_origins(value: str) -> tuple[str, ...]:
    """``HL7GW_CORS_ORIGINS``: origins, comma-separated, or ``*``; raises ValueError naming the bad one."""
    origins = tuple(filter(None, (part.strip().rstrip("/") for part in value.split(","))))
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin[:80]!r} is not an origin (scheme://host[:port]) or '*'")
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' allows every origin; list origins or give '*' alone")
    return origins


def parse_tokens(value: str) -> list[ApiToken]:
    """Parse ``name:token:role`` and ``token:role`` entries, comma-separated; raises ValueError naming the bad entry.

    The role is after the last ':', the name before the first; the token is what lies between and
    may itself contain ':'. An entry with one ':' is ``token:role``, named by ``legacy_token_name``.
    Errors name entries by position and quote neither tokens nor the parts that could be one.
    """
    tokens: list[ApiToken] = []
    for position, entry in enumerate(filter(None, (part.strip() for part in value.split(","))), start=1):
        rest, sep, role_text = entry.rpartition(":")
        if not sep or not rest:
            raise ValueError(f"entry {position} is not name:token:role or token:role")
        try:
            role = Role(role_text)
        except ValueError:
            raise ValueError(
                f"entry {position}: the role after the last ':' is not reader, operator, admin or metrics"
            ) from None
        name, sep, token = rest.partition(":")
        if not sep:
            name, token = legacy_token_name(rest), rest
        elif not TOKEN_NAME.fullmatch(name):
            raise ValueError(
                f"entry {position}: a token name is 1-64 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        if not token:
            raise ValueError(f"entry {position}: the token is empty")
        for earlier, other in enumerate(tokens, start=1):
            if other.name == name:
                raise ValueError(f"entries {earlier} and {position} have the same name {name!r}")
            if other.token == token:
                raise ValueError(f"entries {earlier} and {position} have the same token")
        tokens.append(ApiToken(name, token, role))
    return tokens


#: Signature algorithms a bearer JWT may use (asymmetric: the gateway holds only public keys; never
#: ``none``, never HS*, whose "key" would be the public key anyone can fetch).
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Hosts an authorization server may be reached at over plain http (tests, a sidecar); others need https.
_LOOPBACK = re.compile(r"http://(?:localhost|127\.\d+\.\d+\.\d+|\[::1\])(?::\d{1,5})?(?:/\S*)?")


def check_authorization_url(value: str) -> str:
    """An authorization server's URL: https, or http on this machine; raises ValueError."""
    if not (value.startswith("https://") and len(value) > 8 and " " not in value) and not _LOOPBACK.fullmatch(value):
        raise ValueError("must be an https:// URL (http:// only for localhost)")
    return value


def parse_algorithms(value: str) -> tuple[str, ...]:
    """``HL7GW_OIDC_ALGORITHMS``: comma-separated names from JWT_ALGORITHMS; raises ValueError naming a bad one."""
    names = tuple(dict.fromkeys(filter(None, (part.strip() for part in value.split(",")))))
    for name in names:
        if name not in JWT_ALGORITHMS:
            raise ValueError(f"{name[:16]!r} is not one of {', '.join(JWT_ALGORITHMS)} (never none or HS*)")
    if not names:
        raise ValueError("names no algorithm")
    return names


def parse_role_scopes(value: str) -> dict[str, Role]:
    """``HL7GW_OIDC_ROLE_SCOPES``: ``scope=role,...``; raises ValueError naming the bad entry."""
    found: dict[str, Role] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        scope, sep, role = entry.rpartition("=")
        if not sep or not scope.strip() or " " in scope.strip() or role.strip() not in Role.__members__:
            raise ValueError(f"entry {entry[:80]!r} is not scope=reader|operator|admin|metrics")
        found[scope.strip()] = Role(role.strip())
    return found
