"""Logging for every hl7gw process: one line per record on stderr, and no patient data in any of them.

Our own log calls name messages by envelope id, sender and control id, never by content. What
the formatter adds is for what we do not write ourselves:

* a dramatiq message given as an argument (dramatiq logs ``Received message %s``, whose text is
  the actor call with its arguments: the whole envelope, raw message included) is written as its id;
* an exception given as an argument, and every exception in a traceback, is written by
  ``gateway.errors.describe``: type, SQLSTATE or our own position-only text, never its own words
  (a KeyError or a database error can quote a name or an identifier);
* bytes given as an argument are written as their length, and a container (a tuple, list, dict
  or set: dramatiq logs an actor's arguments as ``Received args=%r``) as its size: our own log
  calls pass scalars.

dramatiq's own words about failures are moved to DEBUG: the noise it makes for every second of a
Redis outage (a connection error per consumer, a failed acknowledgement per message every 5 s;
the worker logs each outage once, gateway/services/outages.py), and its line for every failed
attempt (gateway/services/failures.py logs what it decides: a retry or a dead letter).
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

from gateway.errors import describe

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"

#: dramatiq's lines for every attempt that failed and every second of a Redis outage (made DEBUG).
_DRAMATIQ_NOISE = (
    "Failed to process message",
    "Consumer encountered a connection error",
    "Restarting consumer in",
    "Failed to post_process_message(",
    "Failed to requeue messages on queue",
)


def setup(level: str = "INFO") -> None:
    """Send every logger's records through one PHI-safe handler at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(FORMAT))
    handler.addFilter(QuietDramatiq())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


class SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, BaseException):
            record.msg = describe(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(safe_argument(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: safe_argument(value) for key, value in record.args.items()}
        return super().format(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return safe_traceback(ei[1]) if ei and ei[1] is not None else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - code lines only, no values
        return stack_info


def safe_argument(value: object) -> object:
    """A log argument as it may be written: see the module docstring."""
    if isinstance(value, BaseException):
        return describe(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)}>"
    message_id = _dramatiq_message_id(value)
    return message_id if message_id is not None else value


def _dramatiq_message_id(value: object) -> str | None:
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    if isinstance(value, MessageProxy):
        return str(value.message_id)
    if isinstance(value, Message):
        return str(value.message_id)
    return None


def safe_traceback(exc: BaseException) -> str:
    """A traceback with its frames and code lines, but each exception written by ``describe``."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts: list[str] = []
    for number, item in enumerate(reversed(chain)):
        if number:
            parts.append("\nThe above exception led to the following one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        parts.append(describe(item) + "\n")
    return "".join(parts).rstrip("\n")


class QuietDramatiq(logging.Filter):
    """dramatiq's per-attempt and per-second complaints, moved to DEBUG (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("dramatiq.") and record.levelno > logging.DEBUG:
            if isinstance(record.msg, str) and record.msg.startswith(_DRAMATIQ_NOISE):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.exc_info = None
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True
