"""Parsers of the settings whose values have a syntax of their own: API tokens and roles, time zones."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path


class Role(StrEnum):
    reader = "reader"
    operator = "operator"
    admin = "admin"


ROLE_RANK = {Role.reader: 0, Role.operator: 1, Role.admin: 2}


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


def parse_sender_policies(value: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Parse ``APP|FACILITY=policy,...`` into {sender: policy}; raises ValueError naming the bad entry."""
    policies: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        sender, sep, policy = entry.rpartition("=")
        if not sep or "|" not in sender or policy.strip() not in allowed:
            raise ValueError(f"entry {entry!r} is not APPLICATION|FACILITY={'|'.join(allowed)}")
        policies[sender.strip()] = policy.strip()
    return policies


def parse_tokens(value: str) -> dict[str, Role]:
    """Parse ``token:role,token:role`` into a mapping; raises ValueError naming the bad entry."""
    tokens: dict[str, Role] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        token, sep, role = entry.rpartition(":")
        if not sep or not token:
            raise ValueError(f"entry {entry!r} is not token:role")
        try:
            tokens[token] = Role(role)
        except ValueError:
            raise ValueError(f"role {role!r} is not one of reader, operator, admin") from None
    return tokens
