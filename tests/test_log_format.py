"""HL7GW_LOG_FORMAT: the text and JSON lines, the message context they carry, and that context
staying with its own thread or task."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import logcontext, logs
from gateway.errors import StageCrash

PHI = "Quixbartley"
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def capture(log_format: str, process: str | None = "worker-3") -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"gateway.test-{log_format}-{id(stream)}")
    logger.handlers[:] = [logs.make_handler(log_format, process, stream)]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_every_field() -> None:
    logger, stream = capture("json")
    with logcontext.message_context("env-1", "REG|HOSP", "CTRL-9"):
        logger.info("stored %s: %d resource(s)", "ADT^A01", 4, extra={"outcome": "stored", "raw": PHI.encode()})
    (line,) = json_lines(stream)
    assert ISO_MS_UTC.match(str(line.pop("time")))
    assert isinstance(line.pop("pid"), int)
    assert line == {
        "level": "INFO",
        "logger": logger.name,
        "process": "worker-3",
        "message": "stored ADT^A01: 4 resource(s)",
        "envelope_id": "env-1",
        "sender": "REG|HOSP",
        "control_id": "CTRL-9",
        "outcome": "stored",
        "raw": f"<{len(PHI)} bytes>",  # an extra field is made safe like an argument
    }


def test_a_json_line_without_a_message_has_no_context_fields() -> None:
    logger, stream = capture("json", process=None)
    logger.warning("listening")
    (line,) = json_lines(stream)
    assert not {"envelope_id", "sender", "control_id", "exception"} & set(line)
    assert line["process"] == "MainProcess" and line["level"] == "WARNING"


def test_what_a_call_names_itself_wins_over_the_context() -> None:
    logger, stream = capture("text")
    with logcontext.message_context("env-1", "REG|HOSP", "CTRL-9"):
        logger.info("replayed", extra={"envelope_id": "env-2"})
    assert stream.getvalue().endswith(": replayed [envelope=env-2 sender=REG|HOSP control_id=CTRL-9]\n")


def test_a_text_line_keeps_its_format_and_appends_the_message() -> None:
    logger, stream = capture("text")
    logger.info("no message here")
    with logcontext.message_context("env-1", "", "CTRL-9"):
        logger.info("accepted %s", "ADT^A04")
    first, second = stream.getvalue().splitlines()
    assert re.match(rf"^\S+ \S+ INFO worker-3\[\d+\] {re.escape(logger.name)}: no message here$", first)
    assert second.endswith(
        "INFO worker-3[" + second.split("[", 1)[1].split("]", 1)[0] + f"] {logger.name}: "
        "accepted ADT^A04 [envelope=env-1 control_id=CTRL-9]"
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_is_a_safe_traceback_in_both_formats(log_format: str) -> None:
    logger, stream = capture(log_format)
    try:
        try:
            {}[PHI]
        except KeyError as exc:
            raise StageCrash("convert", exc) from exc
    except StageCrash:
        with logcontext.message_context("env-1", "REG|HOSP", "CTRL-9"):
            logger.exception("a bug")
    text = stream.getvalue()
    assert PHI not in text and "KeyError at test_log_format.py:" in text
    if log_format == "json":
        (line,) = json_lines(stream)
        assert str(line["exception"]).startswith("Traceback (most recent call last)")
        assert line["message"] == "a bug" and line["envelope_id"] == "env-1"
    else:
        assert text.splitlines()[0].endswith("a bug [envelope=env-1 sender=REG|HOSP control_id=CTRL-9]")


@settings(max_examples=100, deadline=None)
@given(
    words=st.text(max_size=40).map(lambda text: f"PHI<{text}>"),
    control_id=st.text(min_size=1, max_size=300),
)
def test_json_lines_are_one_object_each_whatever_is_logged(words: str, control_id: str) -> None:
    logger, stream = capture("json")
    with logcontext.message_context("env", "A|B", control_id):
        logger.info("%s %s %r", ValueError(words), words.encode(), [words], extra={"detail": {"x": words}})
        try:
            raise KeyError(words)
        except KeyError:
            logger.error("failed", exc_info=True)
    lines = stream.getvalue().split("\n")
    assert len(lines) == 3 and lines[2] == ""  # a line break inside a value is escaped: one object per line
    parsed = [orjson.loads(line) for line in lines[:2]]
    kept = "".join(c if c.isprintable() else "?" for c in control_id[:200])
    assert all(p["control_id"] == kept for p in parsed)
    assert words not in stream.getvalue() and words not in str(parsed)


def test_the_context_belongs_to_its_thread() -> None:
    seen: dict[str, object] = {}
    started, release = threading.Event(), threading.Event()

    def other() -> None:
        seen["before"] = logcontext.current()
        with logcontext.message_context("env-b", "B|B", "b"):
            started.set()
            release.wait(5)
            seen["inside"] = logcontext.current()

    with logcontext.message_context("env-a", "A|A", "a"):
        thread = threading.Thread(target=other)
        thread.start()
        started.wait(5)
        assert logcontext.current() == logcontext.MessageContext("env-a", "A|A", "a")
        release.set()
        thread.join(5)
    assert logcontext.current() is None
    assert seen == {"before": None, "inside": logcontext.MessageContext("env-b", "B|B", "b")}


def test_the_context_belongs_to_its_asyncio_task() -> None:
    async def one(name: str) -> list[str]:
        found = []
        with logcontext.message_context(f"env-{name}", "", name):
            for _ in range(3):
                await asyncio.sleep(0)
                context = logcontext.current()
                found.append(context.envelope_id if context else "")
        return found

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(one("x"), one("y")))

    assert asyncio.run(both()) == [["env-x"] * 3, ["env-y"] * 3]


def test_only_one_line_of_text_enters_the_context() -> None:
    with logcontext.message_context(b"raw bytes", 12, None):
        assert logcontext.current() == logcontext.MessageContext("", "", "")
        assert logcontext.current().fields() == {}  # type: ignore[union-attr]
    logger, stream = capture("text")
    with logcontext.message_context("env", "A|B", "C1\n2026-01-01 00:00:00 ERROR forged"):
        logger.info("accepted")
    assert stream.getvalue().count("\n") == 1 and "control_id=C1?2026-01-01" in stream.getvalue()
