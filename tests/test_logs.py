"""The log formatter: what a library hands to a log call is written without the data in it."""

from __future__ import annotations

import io
import logging

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import logs
from gateway.errors import StageCrash

PHI = "Quixbartley"


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.SafeFormatter("%(levelname)s %(message)s"))
    handler.addFilter(logs.QuietDramatiq())
    logger = logging.getLogger(f"test-logs-{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def test_a_dramatiq_message_is_written_as_its_id(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    args = ({"raw": PHI},)
    message = dramatiq.Message(queue_name="hl7", actor_name="process_message", args=args, kwargs={}, options={})
    logger.info("Received message %s with id %r.", MessageProxy(message), message.message_id)
    logger.info("Failed to post_process_message(%s)", message)
    assert PHI not in stream.getvalue() and stream.getvalue().count(message.message_id) == 3


def test_arguments_that_carry_data_are_written_by_their_size(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.debug("Received args=%r kwargs=%r.", ({"raw": PHI},), {"x": PHI})
    logger.info("raw %s", PHI.encode())
    logger.info("%(a)s", {"a": KeyError(PHI)})
    text = stream.getvalue()
    assert PHI not in text and "<tuple of 1>" in text and "<dict of 1>" in text and f"<{len(PHI)} bytes>" in text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40).map(lambda text: f"PHI<{text}>"))
def test_a_traceback_names_frames_and_types_but_no_exception_words(words: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.SafeFormatter("%(message)s"))
    logger = logging.getLogger("test-logs-traceback")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        try:
            {}[words]
        except KeyError as exc:
            raise StageCrash("convert", exc) from exc
    except StageCrash:
        logger.exception("a bug")
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text and "{}[words]" in text  # frames and code lines
    assert "KeyError at test_logs.py:" in text and "led to the following one" in text
    assert words not in text


def test_dramatiq_attempt_noise_goes_to_debug(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    dramatiq_logger = logging.getLogger("dramatiq.worker.ConsumerThread(hl7)")
    dramatiq_logger.handlers[:] = list(logger.handlers)
    dramatiq_logger.propagate = False
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        dramatiq_logger.critical("Consumer encountered a connection error: %s", ConnectionError("gone"))
        dramatiq_logger.warning("something else")
    finally:
        logging.getLogger().setLevel(previous)
        dramatiq_logger.handlers[:] = []
        dramatiq_logger.propagate = True
    assert "connection error" not in stream.getvalue() and "WARNING something else" in stream.getvalue()


def test_httpx_request_lines_go_to_debug(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.handlers[:] = list(logger.handlers)
    httpx_logger.propagate = False
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    try:
        httpx_logger.info('HTTP Request: %s %s "%s %d %s"', "PUT", "http://x/fhir/Patient/1", "HTTP/1.1", 201, "OK")
        logging.getLogger().setLevel(logging.DEBUG)
        httpx_logger.info('HTTP Request: %s %s "%s %d %s"', "PUT", "http://x/fhir/Patient/2", "HTTP/1.1", 201, "OK")
    finally:
        logging.getLogger().setLevel(previous)
        httpx_logger.handlers[:] = []
        httpx_logger.propagate = True
    text = stream.getvalue()
    assert "Patient/1" not in text and "DEBUG HTTP Request: PUT http://x/fhir/Patient/2" in text


def test_a_message_that_is_not_text_is_made_safe_too(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info({"family": PHI})
    logger.info(PHI.encode())
    logger.info(KeyError(PHI))
    text = stream.getvalue()
    assert PHI not in text and "<dict of 1>" in text and f"<{len(PHI)} bytes>" in text and "KeyError at " in text
