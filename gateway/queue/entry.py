"""One message as the intake commit script's arguments, already encoded as RESP bulk strings.

Per message the script takes six values: the sender's sequence key ("" for a message kept only for
operators), its dedup key ("" for none), a content digest, the Redis message id, and dramatiq's
message JSON split where the sequence number goes (``..."seq":`` | ``<n>`` | ``}],...``). The
JSON is exactly what ``dramatiq`` writes for an enqueue of ``process_message(envelope)`` (or of
the actor of another pipeline queue, gateway/keys.py PIPELINE_ACTORS), the envelope in
``Envelope.to_json`` form; it is built with byte formatting, not a dict and a dump,
because the listener encodes thousands of these a second.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import secrets
import uuid
from collections.abc import Mapping

import orjson

from gateway.envelope import Kind
from gateway.keys import PIPELINE_ACTORS, QUEUE, Keys

#: Values per message in the commit script's ARGV.
ARGS_PER_MESSAGE = 6
_KIND_JSON = {kind: orjson.dumps(kind.value) for kind in Kind}

_HEAD = b'{"queue_name":%b,"actor_name":%b,"args":['
_BODY = b'%b{"id":%b,"raw":"%b","received_at":%d,"sender":%b,"control_id":%b,"peer":%b,"kind":%b,"meta":%b,"seq":'
_TAIL = b'}],"kwargs":{},"options":{"redis_message_id":%b},"message_id":%b,"message_timestamp":%d}'
_ENTRY = b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_NO_META = orjson.dumps({})
_MAX_SENDERS = 4096


class Received:
    """One message as the listener hands it to the intake: what the envelope will hold, without
    building an Envelope (the listener receives thousands a second)."""

    __slots__ = ("raw", "sender", "control_id", "peer", "kind", "meta")

    def __init__(
        self,
        raw: bytes,
        sender: str,
        control_id: str,
        peer: str,
        kind: Kind = Kind.MESSAGE,
        meta: Mapping[str, str] | None = None,
    ):
        self.raw = raw
        self.sender = sender
        self.control_id = control_id
        self.peer = peer
        self.kind = kind
        self.meta = meta


class EntryEncoder:
    """Encodes messages for one namespace's commit script, as messages of one pipeline queue's
    actor; remembers each sender's key parts."""

    def __init__(self, keys: Keys, dedup_window_s: int, queue: str = QUEUE):
        if queue not in PIPELINE_ACTORS:
            raise ValueError(f"{queue!r} is not a pipeline queue ({', '.join(PIPELINE_ACTORS)})")
        self.keys = keys
        self.dedup_window_s = dedup_window_s
        self.queue = queue
        self._head = _HEAD % (orjson.dumps(queue), orjson.dumps(PIPELINE_ACTORS[queue]))
        self._senders: dict[str, tuple[bytes, bytes, bytes]] = {}

    def encode(self, id: str, received_at: int, message: Received) -> bytes:
        """The six ARGV values of one message; a ``kind`` other than a message is kept for
        operators only (no sequence number, no duplicate check)."""
        raw, control_id, kind, meta = message.raw, message.control_id, message.kind, message.meta
        sender_json, seq_key, dedup_prefix = self._sender(message.sender)
        if kind != Kind.MESSAGE:
            seq_key = dedup_key = digest = b""
        elif self.dedup_window_s and control_id:
            dedup_key = dedup_prefix + control_id.encode()
            digest = content_digest(raw).encode()
        else:
            dedup_key = digest = b""
        id_json = orjson.dumps(id)
        prefix = _BODY % (
            self._head,
            id_json,
            binascii.b2a_base64(raw, newline=False),
            received_at,
            sender_json,
            orjson.dumps(control_id),
            orjson.dumps(message.peer),
            _KIND_JSON[kind],
            orjson.dumps(meta) if meta else _NO_META,
        )
        suffix = _TAIL % (id_json, id_json, received_at)
        rid = id.encode()
        return _ENTRY % (
            len(seq_key), seq_key, len(dedup_key), dedup_key, len(digest), digest,
            len(rid), rid, len(prefix), prefix, len(suffix), suffix,
        )  # fmt: skip

    def _sender(self, sender: str) -> tuple[bytes, bytes, bytes]:
        parts = self._senders.get(sender)
        if parts is None:
            if len(self._senders) >= _MAX_SENDERS:
                self._senders.clear()
            keys = self.keys
            parts = (orjson.dumps(sender), keys.sequence(sender).encode(), keys.dedup(sender, "").encode())
            self._senders[sender] = parts
        return parts


def content_digest(raw: bytes) -> str:
    """Short digest telling a resend (same bytes) from a reused control id (other bytes)."""
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


_ID_HEAD = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": version and variant digits included
_ID_NUMBERS = itertools.count(secrets.randbelow(1 << 40))


def new_envelope_id() -> str:
    """A version-4-shaped UUID: 80 random bits drawn once per process, then a 48-bit counter as
    its last group (a fraction of the cost of ``uuid.uuid4()``, which shows at thousands a second)."""
    return f"{_ID_HEAD}{next(_ID_NUMBERS) & 0xFFFF_FFFF_FFFF:012x}"
