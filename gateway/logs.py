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

Two formats (HL7GW_LOG_FORMAT): ``text``, one line as ``FORMAT`` says, and ``json``, one JSON
object per line (``JsonFormatter``), both made safe by the same rules. Each line names the process
(its role: supervisor, mllp, worker-0, api) and, while a message is handled, the message's envelope
id, sender and control id (gateway/logcontext.py); docs/observability.md lists every field.

dramatiq's own words about failures are moved to DEBUG: the noise it makes for every second of a
Redis outage (a connection error per consumer, a failed acknowledgement per message every 5 s;
the worker logs each outage once, gateway/services/outages.py), and its line for every failed
attempt (gateway/services/failures.py logs what it decides: a retry or a dead letter); so is
httpx's line for every request to a remote sink (the sink worker logs the delivery's outcome).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import traceback
from typing import IO, Any

import orjson

from gateway import logcontext
from gateway.errors import describe

#: The text format: the line it always was, with the message it is about appended (``Stamp``).
FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s%(message_context)s"

#: dramatiq's lines for every attempt that failed and every second of a Redis outage (made DEBUG).
_DRAMATIQ_NOISE = (
    "Failed to process message",
    "Consumer encountered a connection error",
    "Restarting consumer in",
    "Failed to post_process_message(",
    "Failed to requeue messages on queue",
)
_HTTPX_NOISE = ("HTTP Request:",)


def setup(level: str = "INFO", log_format: str = "text", process: str | None = None) -> None:
    """Send every logger's records through one PHI-safe handler at ``level``, as ``log_format``
    ("text" or "json") lines naming ``process`` (a role; None: Python's process name)."""
    handler = make_handler(log_format, process)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # Neither format writes the caller's file and line, nor the thread: not looking them up for
    # every record saves a third of a line's cost (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False


def make_handler(
    log_format: str = "text", process: str | None = None, stream: IO[str] | None = None
) -> logging.Handler:
    """The one handler of ``setup``: to ``stream`` (default stderr), PHI-safe, in ``log_format``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else SafeFormatter(FORMAT))
    handler.addFilter(Stamp(process))
    handler.addFilter(QuietDramatiq())
    return handler


class Stamp(logging.Filter):
    """Writes on each record, in the thread that logs it, the process's role and the message being
    handled (gateway/logcontext.py): ``message_context``, " [envelope=... sender=... control_id=...]"
    for the text format, and ``context_fields`` for the JSON one. A record that names its message
    itself (``extra={"envelope_id": ...}``) keeps what it says."""

    def __init__(self, process: str | None = None):
        super().__init__()
        self.process = process
        #: The last context written and its fields and text: a message's lines share them.
        self._last: tuple[logcontext.MessageContext | None, dict[str, str], str] = (None, {}, "")

    def filter(self, record: logging.LogRecord) -> bool:
        if self.process:
            record.processName = self.process
        context = logcontext.current()
        last = self._last
        if context is not last[0]:
            fields = context.fields() if context is not None else {}
            last = self._last = (context, fields, _text_context(fields))
        fields, text = last[1], last[2]
        if any(name in record.__dict__ for name in _CONTEXT_FIELDS):
            fields = dict(fields)
            for name in _CONTEXT_FIELDS:
                value = record.__dict__.get(name)
                if isinstance(value, str) and value:
                    fields[name] = value
            text = _text_context(fields)
        record.context_fields = fields
        record.message_context = text
        return True


def _text_context(fields: dict[str, str]) -> str:
    return " [" + " ".join(f"{_TEXT_NAMES[name]}={value}" for name, value in fields.items()) + "]" if fields else ""


_CONTEXT_FIELDS = ("envelope_id", "sender", "control_id")
_TEXT_NAMES = {"envelope_id": "envelope", "sender": "sender", "control_id": "control_id"}


def make_safe(record: logging.LogRecord) -> None:
    """The record's message and arguments as they may be written (see the module docstring)."""
    if not isinstance(record.msg, str):  # an exception, bytes, a container logged as the message itself
        record.msg = safe_argument(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(safe_argument(arg) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {key: safe_argument(value) for key, value in record.args.items()}


class SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        make_safe(record)
        if not hasattr(record, "message_context"):  # a handler without the Stamp (tests)
            record.message_context = ""
        return super().format(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return safe_traceback(ei[1]) if ei and ei[1] is not None else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - code lines only, no values
        return stack_info


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, pid, message; the message's
    envelope_id, sender and control_id when known; exception (a safe traceback) when there is
    one; and what our calls pass as ``extra=``, each value made safe like an argument."""

    def format(self, record: logging.LogRecord) -> str:
        make_safe(record)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "context_fields", {}))
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in line:
                line[name] = _json_value(safe_argument(value))
        if record.exc_info and record.exc_info[1] is not None:
            line["exception"] = safe_traceback(record.exc_info[1])
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line).decode()


#: What every LogRecord has (and what formatters and our Stamp add): not an ``extra`` field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "message_context",
    "context_fields",
    "color_message",  # uvicorn's coloured copy of its format string
    "taskName",
}


def _json_value(value: object) -> object:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def safe_argument(value: object) -> object:
    """A log argument as it may be written: see the module docstring."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, BaseException):
        return describe(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)}>"
    message_id = _dramatiq_message_id(value)
    return message_id if message_id is not None else value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _dramatiq_message_id(value: object) -> str | None:
    if isinstance(value, _dramatiq_types()):
        return str(value.message_id)  # type: ignore[attr-defined]
    return None


@functools.cache
def _dramatiq_types() -> tuple[type, ...]:
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    return (MessageProxy, Message)


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
    """dramatiq's per-attempt and per-second complaints, and httpx's line per request (a remote
    sink's delivery is one line of ours, gateway/deliver/sink_worker.py), moved to DEBUG (see the
    module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.name.startswith(("dramatiq.", "httpx")):
            noise = _HTTPX_NOISE if record.name.startswith("httpx") else _DRAMATIQ_NOISE
            if isinstance(record.msg, str) and record.msg.startswith(noise):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                record.exc_info = None
                return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True
