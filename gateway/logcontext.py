"""Which message a log line is about, without each log call saying so.

While a message is handled (the listener's verdict and ACK, the worker's pipeline and failure
policy, a sink delivery, a replay) its envelope id, sender and control id are held in a context
variable; the log handler (gateway/logs.py) writes them on every line logged meanwhile. Only these
three: the envelope id is ours, and the house rules count the sender (MSH-3|MSH-4) and the control
id (MSH-10) as no patient data. Nothing else from a message may enter the context.

A context variable is per thread (dramatiq's worker threads each have their own) and per asyncio
task (a task copies its creator's context), so concurrent messages never see each other's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass

#: Longest text kept of each part: a control id is at most 199 characters in HL7 v2.8 (ST),
#: a sender two HD components.
_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class MessageContext:
    """The message a line is about; an empty part is not known (yet)."""

    envelope_id: str = ""
    sender: str = ""
    control_id: str = ""

    def fields(self) -> dict[str, str]:
        """The known parts, by their log field names."""
        known = (("envelope_id", self.envelope_id), ("sender", self.sender), ("control_id", self.control_id))
        return {name: value for name, value in known if value}


_current: ContextVar[MessageContext | None] = ContextVar("hl7gw_message_context", default=None)


def current() -> MessageContext | None:
    """The message being handled on this thread or task, if any."""
    return _current.get()


def bind(envelope_id: object = "", sender: object = "", control_id: object = "") -> Token[MessageContext | None]:
    """Say which message is handled from now on (until ``unbind`` with the token, or ``clear``)."""
    return _current.set(MessageContext(_text(envelope_id), _text(sender), _text(control_id)))


def unbind(token: Token[MessageContext | None]) -> None:
    _current.reset(token)


def clear() -> None:
    """No message is handled any more on this thread (a worker thread, between messages)."""
    _current.set(None)


@contextlib.contextmanager
def message_context(envelope_id: object = "", sender: object = "", control_id: object = "") -> Iterator[None]:
    """Every line logged inside the block names this message."""
    token = bind(envelope_id, sender, control_id)
    try:
        yield
    finally:
        _current.reset(token)


def _text(value: object) -> str:
    """``value`` as one line of printable text (a control id with a line break must not forge a
    log line); anything but text is left out."""
    if not isinstance(value, str):
        return ""
    value = value[:_MAX_CHARS]
    return value if value.isprintable() else "".join(c if c.isprintable() else "?" for c in value)
