"""Label values with a bound: whatever arrives on the wire, a metric gets a few hundred series at
most, and never a value that could identify a patient (only MSH-3/4/9 and codes of our own)."""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway import errors
from gateway.stages import Stage

#: What every label takes when its value is unknown or beyond the bound.
OTHER = "other"
#: Distinct senders named per process; later ones are counted as "other".
MAX_SENDERS = 500
#: Longest sender label kept (MSH-3.1 and MSH-4.1 are HD namespace ids, 20 characters each in v2.5).
MAX_SENDER_CHARS = 64

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
#: The stages a dead letter is counted under; ``deliver:<sink>`` is "sink".
LETTER_STAGES = frozenset({"intake", "queue", "parse", "convert", "validate", "deliver", "archive", "gateway"})
REPLAY_KINDS = frozenset({"replay", "reprocess"})
SINK_OUTCOMES = frozenset({"delivered", "retried", "refused", "expired"})
IMPORT_OUTCOMES = frozenset({"accepted", "duplicate", "rejected", "ack-kept", "not-stored"})
INBOX_OUTCOMES = frozenset({"imported", "already-imported", "failed"})
SUBSCRIPTION_OUTCOMES = frozenset({"sent", "retried", "refused"})
MLLP_REFUSALS = frozenset({"max-connections", "stopping", "peer-limit", "not-allowed"})
UNFINISHED_FRAME_REASONS = frozenset({"cut-off", "closed", "timeout"})

_MESSAGE_TYPE = re.compile(r"[A-Z0-9]{2,3}\^[A-Z0-9]{2,3}")
_ERR_CODE = re.compile(r"\d{1,3}")
#: The error types the gateway names itself, plus the few a sink's letters use.
_ERROR_TYPES = frozenset(
    name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, BaseException)
) | {"SinkMaxAgeExceeded", "RemoteRejected", "RemoteUnavailable"}
_MAX_FOREIGN_ERROR_TYPES = 50


class SenderLabels:
    """``MSH-3.1|MSH-4.1`` as given for the first ``limit`` senders seen, then "other"."""

    def __init__(self, limit: int = MAX_SENDERS):
        self.limit = limit
        self._known: dict[str, str] = {}

    def __call__(self, sender: str) -> str:
        label = self._known.get(sender)
        if label is not None:
            return label
        if len(self._known) >= self.limit:
            return OTHER
        label = sender[:MAX_SENDER_CHARS] if sender else "unknown"
        self._known[sender] = label
        return label


class MessageTypeLabels:
    """``CODE^TRIGGER`` when a mapping converts it (``supports(code, trigger)``), else "other".
    Without ``supports``: any well-formed type, for the first 100 seen."""

    def __init__(self, supports: Callable[[str, str], bool] | None = None, limit: int = 100):
        self.supports = supports
        self.limit = limit
        self._known: dict[str, str] = {}

    def __call__(self, message_type: str) -> str:
        label = self._known.get(message_type)
        if label is not None:
            return label
        label = self._judge(message_type)
        if len(self._known) < 4 * self.limit:
            self._known[message_type] = label
        return label

    def _judge(self, message_type: str) -> str:
        if not _MESSAGE_TYPE.fullmatch(message_type):
            return OTHER
        if self.supports is not None:
            code, _, trigger = message_type.partition("^")
            try:
                return message_type if self.supports(code, trigger) else OTHER
            except Exception:  # noqa: BLE001 - a label is never worth a failure
                return OTHER
        named = sum(1 for value in self._known.values() if value != OTHER)
        return message_type if named < self.limit else OTHER


def ack_code(code: str) -> str:
    return code if code in ACK_CODES else OTHER


def err_code(code: str) -> str:
    """An HL7 table 0357 code (0, 100-207, site codes of up to three digits)."""
    return code if _ERR_CODE.fullmatch(code) else OTHER


def letter_stage(stage: str) -> str:
    if stage in LETTER_STAGES:
        return stage
    if stage.startswith("subscription:"):  # a notification an endpoint refused
        return "subscription"
    return "sink" if stage.startswith(f"{Stage.DELIVER.value}:") else OTHER


class ErrorTypeLabels:
    """An exception class name: the gateway's own always, at most 50 others, then "other"."""

    def __init__(self, limit: int = _MAX_FOREIGN_ERROR_TYPES):
        self.limit = limit
        self._foreign: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in _ERROR_TYPES or name in self._foreign:
            return name
        if len(self._foreign) < self.limit and name.isidentifier() and len(name) <= 64:
            self._foreign.add(name)
            return name
        return OTHER


def one_of(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER
