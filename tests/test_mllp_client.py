"""``hl7gw send``: messages split from files whatever their line ends, each ACK printed, and an
exit status that says whether every message was accepted."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.mllp.client import split_messages
from gateway.mllp.server import MllpServer
from gateway.mllp.triage import IntakeRules, Triage
from tests.conftest import SAMPLES
from tests.support.mllp import adt, listening

segments = st.lists(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789|^~&. ", min_size=1, max_size=30).filter(
        lambda s: s.strip() and not s.startswith(("MSH", "FHS", "BHS", "BTS", "FTS"))
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.text(alphabet="ABC0123", min_size=1, max_size=8), segments), min_size=1, max_size=5),
    st.sampled_from([b"\r", b"\n", b"\r\n"]),
    st.booleans(),
)
def test_split_messages_whatever_the_line_ends(messages, newline, blank_lines):
    expected = [
        (f"MSH|^~\\&|A|B|C|D|2024||ADT^A01|{cid}|P|2.5\r" + "".join(s + "\r" for s in body)).encode()
        for cid, body in messages
    ]
    data = (newline * 2 if blank_lines else newline).join(m.rstrip(b"\r").replace(b"\r", newline) for m in expected)
    assert split_messages(data + newline) == expected


def test_split_messages_drops_batch_envelopes_framing_and_bom():
    data = b"\xef\xbb\xbfFHS|^~\\&\nBHS|^~\\&\n" + adt("B1") + b"\n" + adt("B2") + b"BTS|2\nFTS|1\n"
    assert split_messages(data) == [adt("B1"), adt("B2")]
    assert split_messages(b"\x0b" + adt("F1") + b"\x1c\r") == [adt("F1")]
    sample = SAMPLES / "v2-to-fhir-ig" / "ORU_R01.hl7"
    assert split_messages(sample.read_bytes()) == [sample.read_bytes().rstrip(b"\r\n") + b"\r"]


class ListenerThread:
    """A listener in a thread of its own, so that the blocking command line can talk to it."""

    def __init__(self, redis_url: str, namespace: str, triage: Triage | None = None):
        self.redis_url, self.namespace, self.triage = redis_url, namespace, triage
        self.port = 0
        self.server: MllpServer | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with listening(self.redis_url, self.namespace, triage=self.triage) as (server, port):
            self.server, self.port = server, port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ListenerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def listener(redis_url: str, redis_namespace: str) -> Iterator[ListenerThread]:
    rules = IntakeRules(supports=lambda c, t: (c, t) == ("ADT", "A01"), known_codes=frozenset({"ADT"}))
    with ListenerThread(redis_url, redis_namespace, Triage(rules)) as running:
        yield running


def send(*args: str) -> int:
    return cli.main(["send", *args])


def test_send_prints_every_ack_and_exits_zero_when_all_are_accepted(
    listener: ListenerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    many = tmp_path / "many.hl7"
    many.write_bytes((adt("S-1") + adt("S-2")).replace(b"\r", b"\r\n"))
    status = send(str(many), str(SAMPLES / "v2-to-fhir-ig" / "ADT_A01.hl7"), "--port", str(listener.port))
    out = capsys.readouterr().out
    assert status == 0, out
    assert f"{many}#1 MSH-10 S-1: AA" in out and f"{many}#2 MSH-10 S-2: AA" in out
    assert "ADT_A01.hl7#1 MSH-10 4637382: CA" in out
    assert "  MSA|AA|S-1" in out and "  MSA|CA|4637382" in out
    assert "3 accepted, 0 not accepted" in out


def test_send_exits_non_zero_on_a_reject(
    listener: ListenerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "mixed.hl7"
    file.write_bytes(adt("M-1") + adt("M-2", trigger="A02") + adt("M-3"))
    assert send(str(file), "--port", str(listener.port)) == 1
    out = capsys.readouterr().out
    assert "MSH-10 M-2: AR" in out and "201^Unsupported event code^HL70357" in out
    assert "MSH-10 M-3: AA" in out and "2 accepted, 1 not accepted" in out


def test_send_exits_non_zero_when_no_ack_comes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        file = tmp_path / "one.hl7"
        file.write_bytes(adt("T-1"))
        assert send(str(file), "--port", str(silent.getsockname()[1]), "--timeout", "0.3") == 1
    assert "MSH-10 T-1: timeout: no ACK in 0.3 s" in capsys.readouterr().out


def test_send_without_a_listener_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.services.embedded_redis import free_port

    file = tmp_path / "one.hl7"
    file.write_bytes(adt("N-1"))
    assert send(str(file), "--port", str(free_port())) == 1
    assert "MSH-10 N-1: cannot connect" in capsys.readouterr().out


def test_send_with_an_unreadable_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert send(str(tmp_path / "missing.hl7")) == 2
    assert "cannot read" in capsys.readouterr().err
