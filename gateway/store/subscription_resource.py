"""What the gateway accepts as an R4 Subscription (subscription.html), and what it keeps of one.

Checked with the fhir.resources R4B model, then: ``criteria`` is a search on one resource type
(``subscription_criteria``); ``channel.type`` is ``rest-hook`` with an http(s) ``endpoint``;
``channel.header`` entries are ``Name: value`` lines; ``channel.payload`` is
``application/fhir+json`` (each notification carries the resource, "full-resource") or absent
(the notification names the resource only, "id-only"). ``status`` is the gateway's: a client may
ask for ``off`` (stop) or anything else (start: ``requested``, then ``active`` once the dispatcher
takes it); ``error`` is never taken from a client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from fhir.resources.R4B.subscription import Subscription

from gateway.store.search_values import SearchError
from gateway.store.subscription_criteria import Criteria, parse_criteria

FHIR_JSON = "application/fhir+json"
Payload = Literal["full-resource", "id-only"]
Status = Literal["requested", "active", "error", "off"]
STATUSES: tuple[Status, ...] = ("requested", "active", "error", "off")

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
#: Headers the gateway sets itself.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
MAX_HEADERS = 20


class SubscriptionInvalid(ValueError):
    """A Subscription the gateway cannot take; the text says why (it names elements, not secrets)."""

    def __init__(self, message: str, code: str = "invalid"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """What the dispatcher and the delivery need of one Subscription."""

    id: str
    criteria: Criteria
    endpoint: str
    #: (name, value) pairs sent with every notification (values may be secrets: never logged).
    headers: tuple[tuple[str, str], ...]
    payload: Payload
    #: What the client asked for: ``off`` or ``requested`` (the gateway keeps the status).
    wanted: Status

    def __repr__(self) -> str:  # never print header values
        return f"SubscriptionSpec(id={self.id!r}, criteria={self.criteria.text!r}, payload={self.payload!r})"


def check_id(resource_id: str) -> str:
    if not _ID.fullmatch(resource_id):
        raise SubscriptionInvalid("a resource id is 1-64 letters, digits, '-' and '.' (datatypes.html#id)")
    return resource_id


def parse_subscription(resource: Any, resource_id: str) -> tuple[SubscriptionSpec, dict[str, Any]]:
    """Check ``resource`` as Subscription ``resource_id``; returns the spec and the resource to keep
    (its id set, without meta, status and error, which the gateway keeps). Raises SubscriptionInvalid."""
    check_id(resource_id)
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise SubscriptionInvalid("the body must be a Subscription resource (resourceType 'Subscription')")
    if "id" in resource and resource["id"] != resource_id:
        raise SubscriptionInvalid(f"the resource's id {str(resource['id'])[:64]!r} is not the id in the URL")
    kept = {key: value for key, value in resource.items() if key not in ("meta", "error")}
    kept["id"] = resource_id
    kept.setdefault("status", "requested")
    try:
        Subscription.model_validate(kept)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or '(resource)'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise SubscriptionInvalid(f"not a valid R4 Subscription: {problems}") from None
    except (TypeError, ValueError):
        raise SubscriptionInvalid("not a valid R4 Subscription") from None
    status = kept["status"]
    if status not in STATUSES:
        raise SubscriptionInvalid(f"status must be one of {', '.join(STATUSES)}")
    try:
        criteria = parse_criteria(str(kept.get("criteria", "")))
    except SearchError as exc:
        raise SubscriptionInvalid(f"criteria: {exc}", exc.code) from None
    channel = kept.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise SubscriptionInvalid("channel.type must be rest-hook (the one channel the gateway has)", "not-supported")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not re.match(r"^https?://[^\s/]+", endpoint):
        raise SubscriptionInvalid("channel.endpoint must be an http:// or https:// URL")
    payload = channel.get("payload")
    if payload not in (None, FHIR_JSON, "application/json"):
        raise SubscriptionInvalid(
            "channel.payload must be application/fhir+json (full resource) or absent (id only)", "not-supported"
        )
    headers = _headers(channel.get("header") or [])
    wanted: Status = "off" if status == "off" else "requested"
    kept["status"] = wanted
    spec = SubscriptionSpec(
        resource_id, criteria, endpoint, headers, "id-only" if payload is None else "full-resource", wanted
    )
    return spec, kept


def _headers(lines: list[Any]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_HEADERS:
        raise SubscriptionInvalid(f"channel.header holds at most {MAX_HEADERS} headers")
    found = []
    for number, line in enumerate(lines):
        name, sep, value = str(line).partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _HEADER_NAME.fullmatch(name) or "\n" in value or "\r" in value:
            raise SubscriptionInvalid(f"channel.header[{number}] must be one 'Name: value' line")
        if name.lower() in _RESERVED_HEADERS:
            raise SubscriptionInvalid(f"channel.header[{number}]: {name} is set by the gateway")
        found.append((name, value))
    return tuple(found)
