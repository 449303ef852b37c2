"""The MLLP listener over real TCP sockets, committing to a real Redis, with real clients."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import hl7
import redis
from hl7.mllp import open_hl7_connection

from gateway.keys import Keys
from gateway.mllp.limits import Limits
from gateway.mllp.triage import IntakeRules, Triage
from gateway.services.embedded_redis import free_port
from tests.conftest import SAMPLES, sample
from tests.support.mllp import RawClient, adt, listening
from tests.support.queue import queued

TYPES = Triage(
    IntakeRules(supports=lambda c, t: (c, t) in {("ADT", "A01"), ("ADT", "A04")}, known_codes=frozenset({"ADT"}))
)


def test_many_connections_pipelined_acked_in_order_with_per_sender_sequence(
    redis_url: str, redis_namespace: str
) -> None:
    connections, per_connection = 10, 30

    async def client(port: int, n: int) -> None:
        # python-hl7's asyncio client, as a sending system would use it.
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        ids = [f"C{n}-{i}" for i in range(per_connection)]
        for control_id in ids:  # pipelined: everything sent before any ACK is read
            writer.writemessage(hl7.parse(adt(control_id, sender=f"S{n % 3}").decode()))
        await writer.drain()
        for control_id in ids:
            ack = await reader.readmessage()
            assert str(ack.segment("MSA")[1]) == "AA"
            assert str(ack.segment("MSA")[2]) == control_id
            assert str(ack.segment("MSH")[9]) == "ACK^A01^ACK"
        writer.close()

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            await asyncio.gather(*(client(port, n) for n in range(connections)))
            assert server.stats.accepted == connections * per_connection

    asyncio.run(scenario())
    stored = queued(redis_url, redis_namespace)
    assert len(stored) == connections * per_connection
    by_sender: dict[str, list[tuple[int, str]]] = {}
    for envelope in stored:
        by_sender.setdefault(envelope.sender, []).append((envelope.seq, envelope.control_id))
    for sender, entries in by_sender.items():
        assert [seq for seq, _ in entries] == list(range(1, len(entries) + 1)), sender
        # Within one connection, sequence order is arrival order.
        for n in range(connections):
            mine = [int(cid.split("-")[1]) for _, cid in entries if cid.startswith(f"C{n}-")]
            assert mine == sorted(mine)


def test_mllp_send_command_line_client(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (_, port):
            mllp_send = Path(sys.executable).parent / "mllp_send"
            process = await asyncio.create_subprocess_exec(
                str(mllp_send),
                "--loose",
                "--file",
                str(SAMPLES / "v2-to-fhir-ig" / "ADT_A01.hl7"),
                "--port",
                str(port),
                "127.0.0.1",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 0, err
            msa = next(s for s in out.decode().replace("\r", "\n").splitlines() if s.startswith("MSA"))
            assert msa.split("|")[1:3] == ["CA", "4637382"]  # the sample asks for enhanced mode (MSH-15 AL)

    asyncio.run(scenario())


def test_sample_with_five_encoding_characters(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (_, port):
            reader, writer = await open_hl7_connection("127.0.0.1", port)
            writer.writemessage(hl7.parse(sample("v2-to-fhir-ig/ORU_R01.hl7").decode().strip()))
            ack = await reader.readmessage()
            assert str(ack.segment("MSA")[1]) == "CA"  # MSH-15 AL: enhanced mode, accept acknowledgement
            assert str(ack.segment("MSA")[2]) == "20251014154001-425"
            assert str(ack.segment("MSH")[2]) == "^~\\&#"
            writer.close()

    asyncio.run(scenario())


def test_unreadable_header_gets_ar_and_is_kept_raw(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            client = await RawClient.connect(port)
            await client.send(b"\x0bPID|1||x\r\x1c\r")
            ack = await client.read_ack()
            assert ack.get("MSA-1") == "AR" and ack.get("MSA-2") == "" and ack.get("ERR-3.1") == "100"
            await client.close()
            assert server.stats.rejected == 1 and server.stats.accepted == 0

    asyncio.run(scenario())
    (kept,) = queued(redis_url, redis_namespace)
    assert kept.raw == b"PID|1||x\r" and kept.kind == "rejected" and kept.seq == 0
    assert kept.meta["reason"].startswith("AR: 100")


def test_header_rejections_answer_the_table_0357_code_and_keep_the_message(
    redis_url: str, redis_namespace: str
) -> None:
    cases = [
        (adt("V-1", version="2.9"), "203"),
        (adt("P-1").replace(b"|P|2.5.1", b"|X|2.5.1"), "202"),
        (adt("T-1", trigger="A02"), "201"),
        (adt("T-2").replace(b"ADT^A01^ADT_A01", b"MDM^T02"), "200"),
    ]

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, triage=TYPES) as (_, port):
            client = await RawClient.connect(port)
            for raw, code in cases:
                await client.send_message(raw)
                ack = await client.read_ack()
                assert (ack.get("MSA-1"), ack.get("ERR-3.1"), ack.get("ERR-4")) == ("AR", code, "E")
                assert ack.get("MSA-2") == raw.split(b"|")[9].decode()
            await client.close()

    asyncio.run(scenario())
    kept = queued(redis_url, redis_namespace)
    assert [e.raw for e in kept] == [raw for raw, _ in cases]
    assert all(e.kind == "rejected" and e.seq == 0 for e in kept)


def test_incoming_ack_is_stored_and_never_answered(redis_url: str, redis_namespace: str) -> None:
    incoming = b"MSH|^~\\&|SND|FAC|GW|GWF|20240101||ACK^A01^ACK|K-1|P|2.5.1\rMSA|AA|OUT-7\r"

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            client = await RawClient.connect(port)
            await client.send_message(incoming)
            assert await client.nothing_more()
            await client.send_message(adt("M-1"))
            assert (await client.read_ack()).get("MSA-2") == "M-1"  # the first thing we get back
            await client.close()
            assert server.stats.acks_received == 1

    asyncio.run(scenario())
    stored = queued(redis_url, redis_namespace)
    assert [(e.kind, e.control_id) for e in stored] == [("ack", "K-1"), ("message", "M-1")]


def test_resent_message_gets_the_same_ack_and_is_enqueued_once(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            for _ in range(3):
                client = await RawClient.connect(port)  # a sender that lost its ACK reconnects and resends
                await client.send_message(adt("D-1"))
                ack = await client.read_ack()
                assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AA", "D-1")
                await client.close()
            assert server.stats.accepted == 1 and server.stats.duplicates == 2

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["D-1"]
    assert redis.Redis.from_url(redis_url).get(Keys(redis_namespace).duplicates()) == b"2"


def test_enhanced_mode_sends_accept_acks_as_msh15_asks(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, triage=TYPES) as (_, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("E-NE", extra="|||NE|AL"))  # never
            await client.send_message(adt("E-ER-ok", extra="|||ER|AL"))  # only on error: fine, so none
            await client.send_message(adt("E-ER-bad", trigger="A02", extra="|||ER|AL"))
            await client.send_message(adt("E-SU-ok", extra="|||SU|AL"))
            await client.send_message(adt("E-SU-bad", trigger="A02", extra="|||SU|AL"))  # none
            await client.send_message(adt("E-AL", extra="|||AL|NE"))
            got = [(a.get("MSA-1"), a.get("MSA-2")) for a in [await client.read_ack() for _ in range(3)]]
            assert got == [("CR", "E-ER-bad"), ("CA", "E-SU-ok"), ("CA", "E-AL")]
            assert await client.nothing_more()
            await client.close()

    asyncio.run(scenario())
    # Suppressed or not, every message was committed (the rejected ones as kept, not processed).
    stages = {e.control_id: e.kind for e in queued(redis_url, redis_namespace)}
    assert stages == {
        "E-NE": "message",
        "E-ER-ok": "message",
        "E-ER-bad": "rejected",
        "E-SU-ok": "message",
        "E-SU-bad": "rejected",
        "E-AL": "message",
    }


def test_invalid_bytes_for_the_charset_get_ae_and_are_kept(redis_url: str, redis_namespace: str) -> None:
    raw = adt("CS-1", extra="||||||UNICODE UTF-8").replace(b"Doe^Jane", b"Do\xe9^Jane")

    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (_, port):
            client = await RawClient.connect(port)
            await client.send_message(raw)
            ack = await client.read_ack()
            assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3.1"), ack.get("ERR-2")) == (
                "AE",
                "CS-1",
                "102",
                "MSH^1^18",
            )
            assert "0xE9" in ack.get("ERR-8")
            await client.close()

    asyncio.run(scenario())
    (kept,) = queued(redis_url, redis_namespace)
    assert kept.raw == raw and kept.kind == "rejected"


def test_redis_down_means_ar_207_never_aa() -> None:
    async def scenario() -> None:
        async with listening(f"redis://127.0.0.1:{free_port()}/0", "down") as (server, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("DOWN-1"))
            ack = await client.read_ack()
            assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3.1")) == ("AR", "DOWN-1", "207")
            await client.send_message(adt("DOWN-2", extra="|||AL|NE"))
            ack = await client.read_ack()
            assert (ack.get("MSA-1"), ack.get("ERR-3.1")) == ("CR", "207")
            await client.close()
            assert server.stats.storage_failures == 2 and server.stats.accepted == 0

    asyncio.run(scenario())


def test_framing_junk_splits_and_missing_cr(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace) as (server, port):
            client = await RawClient.connect(port)
            # Several frames in one write, junk before and between them, one without its CR.
            await client.send(b"junk\r\n" + b"\x0b" + adt("F-1") + b"\x1c\r" + b"xx\x0b" + adt("F-2") + b"\x1c")
            await client.send(b"\x0b" + adt("F-3") + b"\x1c\r")
            # One frame byte by byte.
            for byte in b"\x0b" + adt("F-4") + b"\x1c\r":
                await client.send(bytes([byte]))
            assert [(await client.read_ack()).get("MSA-2") for _ in range(4)] == ["F-1", "F-2", "F-3", "F-4"]
            await client.close()
            assert server.stats.discarded_bytes == len(b"junk\r\nxx")

    asyncio.run(scenario())


def test_required_trailing_cr_rejects_and_keeps_the_frame(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        limits = Limits(require_trailing_cr=True)
        async with listening(redis_url, redis_namespace, limits=limits) as (_, port):
            client = await RawClient.connect(port)
            await client.send(b"\x0b" + adt("CR-1") + b"\x1c\r\x0b" + adt("CR-2") + b"\x1cX")
            assert (await client.read_ack()).get("MSA-1") == "AA"
            ack = await client.read_ack()
            assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3.1")) == ("AR", "CR-2", "100")
            assert await client.closed_by_peer()
            await client.close()

    asyncio.run(scenario())
    assert [(e.control_id, e.kind) for e in queued(redis_url, redis_namespace)] == [
        ("CR-1", "message"),
        ("CR-2", "rejected"),
    ]


def test_mllp_release_2_commit_acknowledgements(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, commit_acks=True) as (server, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("R2-1"))
            assert await client.read_frame() == b"\x06"  # 0x0B 0x06 0x1C 0x0D: committed
            ack = await client.read_ack()
            assert ack.get("MSA-1") == "AA"
            await client.send(b"\x0b\x06\x1c\r")  # our commit ACK of their ACK: read past, never a message
            await client.send_message(b"MSH|^~\\&|SND|FAC|GW|GWF|2024||ACK^A01^ACK|K-2|P|2.5\rMSA|AA|X\r")
            assert await client.read_frame() == b"\x06"  # a stored incoming ACK: committed, no HL7 answer
            assert await client.nothing_more()
            await client.close()
            assert server.stats.commit_acks_received == 1

        async with listening(f"redis://127.0.0.1:{free_port()}/0", "down", commit_acks=True) as (_, port):
            client = await RawClient.connect(port)
            await client.send_message(adt("R2-2"))
            assert await client.read_frame() == b"\x15"  # 0x0B 0x15 0x1C 0x0D: not committed
            assert (await client.read_ack()).get("MSA-1") == "AR"
            await client.close()

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["R2-1", "K-2"]


def test_empty_frames_are_answered_ar_100_and_not_kept(redis_url: str, redis_namespace: str) -> None:
    async def scenario() -> None:
        async with listening(redis_url, redis_namespace, commit_acks=True) as (server, port):
            client = await RawClient.connect(port)
            await client.send(b"\x0b\x1c\r\x0b\r\n\x1c\r")
            await client.send_message(adt("KA-1"))
            for _ in range(2):  # MLLP release 2: received (0x06), then the HL7 answer: no MSH, AR
                assert await client.read_frame() == b"\x06"
                ack = await client.read_ack()
                assert (ack.get("MSA-1"), ack.get("MSA-2"), ack.get("ERR-3.1")) == ("AR", "", "100")
                assert ack.get("MSH-9") == "ACK^^ACK" and ack.get("MSH-12") == "2.5.1"
            assert await client.read_frame() == b"\x06"
            assert (await client.read_ack()).get("MSA-2") == "KA-1"
            await client.close()
            assert (server.stats.empty_frames, server.stats.rejected) == (2, 2)

    asyncio.run(scenario())
    assert [e.control_id for e in queued(redis_url, redis_namespace)] == ["KA-1"]
