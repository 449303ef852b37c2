"""The listener's fast path: one verdict and one ACK template per header shape, not per message.

A sender's messages differ in their MSH mostly in MSH-7 (time) and MSH-10 (control id), and the
triage verdict does not read MSH-7 at all. So a header profile, keyed by the MSH line with those
two fields blanked, holds what ``Triage`` decided for the first such message; a later message with
the same key gets the same verdict with its own control id, and its AA from a template cut where
MSH-7, MSH-10 and MSA-2 go: one split, one dict lookup and one join instead of a parse and a render.

Only what gives exactly the slow path's result takes the fast path: the message starts with MSH,
decodes in a character set where splitting bytes on an ASCII separator is splitting characters
(UTF-8, ASCII, ISO 8859), its verdict is "process" without errors, and its MSH-10 is printable,
not padded and free of separators and escapes (so that MSH-10 as read, as echoed in MSA-2 and as
the dedup key are one and the same string). Anything else goes through ``Triage.decide``.
"""

from __future__ import annotations

import time
from dataclasses import replace

from gateway.envelope import Kind
from gateway.errors import CharsetError
from gateway.hl7.ack import ack_template, new_control_id, timestamp
from gateway.hl7.charset import codec_for, declared_charset
from gateway.mllp.framing import COMMIT_ACK, END_BLOCK, START_BLOCK, encode_frame
from gateway.mllp.triage import Judgement, Triage, Verdict
from gateway.queue.entry import Received

#: Codecs in which an ASCII byte is always that ASCII character and never part of another one.
FAST_CODECS = frozenset({"utf-8", "ascii", *(f"iso8859-{n}" for n in (*range(1, 12), 13, 14, 15, 16))})
_MARK = "\x00msa2\x00"


class Profile:
    """What every message with one header shape shares: its verdict and its ACK template."""

    __slots__ = ("verdict", "sender", "read_codec", "specials", "_head", "_between", "_middle", "_tail", "_stamp")

    def __init__(self, verdict: Verdict, read_codec: str, commit_acks: bool):
        self.verdict = verdict
        self.sender = verdict.sender
        #: Codec the message is read in (an ASCII message is read as UTF-8, like ``decode_message``).
        self.read_codec = read_codec
        seps = verdict.header.seps
        self.specials = seps.component + seps.repetition + seps.escape + seps.subcomponent + seps.truncation
        commit = encode_frame(COMMIT_ACK) if commit_acks else b""
        #: MSH-7 of the last ACK and the tenth of a millisecond it was written in (its resolution).
        self._stamp: tuple[int, bytes] = (-1, b"")
        self._head = self._between = self._middle = self._tail = b""
        if verdict.mode.wants("AA"):
            before, between, after = ack_template(replace(verdict.header, control_id=_MARK), verdict.mode.code("AA"))
            middle, tail = after.split(_MARK)
            codec = verdict.codec
            self._head = commit + START_BLOCK + before.encode(codec, errors="replace")
            self._between = between.encode(codec, errors="replace")
            self._middle = middle.encode(codec, errors="replace")
            self._tail = tail.encode(codec, errors="replace") + END_BLOCK + b"\r"
        else:
            self._tail = commit  # the mode asks for no accept acknowledgement: only the MLLP commit ACK

    def accepted(self, control_id: str) -> bytes:
        """The reply once the message with ``control_id`` is stored: what ``answer`` gives."""
        if not self._head:
            return self._tail
        tick = int(time.time() * 10_000)
        last, stamp = self._stamp
        if tick != last:
            stamp = timestamp(None, self.verdict.header.seps).encode()
            self._stamp = (tick, stamp)
        return b"".join(
            (
                self._head,
                stamp,
                self._between,
                new_control_id().encode(),
                self._middle,
                control_id.encode(self.verdict.codec, errors="replace"),
                self._tail,
            )
        )

    def verdict_for(self, control_id: str) -> Verdict:
        """The full verdict of the message with ``control_id`` (for the rare paths that need it)."""
        verdict = self.verdict
        return replace(verdict, control_id=control_id, header=replace(verdict.header, control_id=control_id))


class Profiled:
    """The judgement of a frame the fast path took: its profile's verdict with its own MSH-10."""

    __slots__ = ("profile", "control_id")
    kind = Kind.MESSAGE

    def __init__(self, profile: Profile, control_id: str):
        self.profile = profile
        self.control_id = control_id

    @property
    def sender(self) -> str:
        return self.profile.sender

    @property
    def message_type(self) -> str:
        return self.profile.verdict.message_type

    @property
    def reason(self) -> str:
        return self.profile.verdict.reason

    def received(self, raw: bytes, peer: str) -> Received:
        return Received(raw, self.profile.sender, self.control_id, peer)

    def reply(self, *, stored: bool, commit_acks: bool = False, storage_problem: str = "") -> bytes:
        """What ``Verdict.reply`` gives, from the profile's template when stored."""
        if stored:
            return self.profile.accepted(self.control_id)
        verdict = self.profile.verdict_for(self.control_id)
        return verdict.reply(stored=False, commit_acks=commit_acks, storage_problem=storage_problem)


class Profiles:
    """The profile cache in front of ``Triage``; bounded, and a shape is learnt on its second sighting
    (a sender that puts something unique in another MSH field gains nothing and loses little)."""

    def __init__(self, triage: Triage, *, commit_acks: bool = False, max_profiles: int = 1024):
        self.triage = triage
        self.commit_acks = commit_acks
        self.max_profiles = max_profiles
        self._profiles: dict[bytes, Profile] = {}
        self._seen: set[bytes] = set()

    def judge(self, frame: bytes) -> Judgement:
        """The fast path's judgement when it can give one, else ``Triage.decide``'s verdict."""
        found = _shape(frame)
        if found is not None:
            key, raw_id = found
            profile = self._profiles.get(key)
            if profile is not None:
                control_id = _control_id(frame, raw_id, profile)
                if control_id is not None:
                    return Profiled(profile, control_id)
        verdict = self.triage.decide(frame)
        if found is not None and verdict.kind == Kind.MESSAGE and not verdict.errors:
            self._learn(found[0], frame, verdict)
        return verdict

    def _learn(self, key: bytes, frame: bytes, verdict: Verdict) -> None:
        if key in self._profiles:
            return
        if key not in self._seen:
            if len(self._seen) >= self.max_profiles:
                self._seen.clear()
            self._seen.add(key)
            return
        try:
            read_codec = codec_for(declared_charset(frame))  # as decode_message reads it
        except CharsetError:
            return
        read_codec = "utf-8" if read_codec == "ascii" else read_codec
        if read_codec not in FAST_CODECS or verdict.codec not in FAST_CODECS:
            return
        if len(self._profiles) >= self.max_profiles:
            del self._profiles[next(iter(self._profiles))]  # the oldest
        self._profiles[key] = Profile(verdict, read_codec, self.commit_acks)


def _shape(frame: bytes) -> tuple[bytes, bytes] | None:
    """The profile key (the MSH line with MSH-7 and MSH-10 blanked) and MSH-10 as bytes."""
    if not frame.startswith(b"MSH"):
        return None
    end = frame.find(b"\r")
    line = frame if end < 0 else frame[:end]
    if len(line) < 8 or b"\n" in line:
        return None
    separator = line[3:4]
    fields = line.split(separator)  # fields[n] is MSH-(n+1)
    if len(fields) < 10:
        return None
    raw_id = fields[9]
    fields[6] = fields[9] = b""
    return separator.join(fields), raw_id


def _control_id(frame: bytes, raw_id: bytes, profile: Profile) -> str | None:
    """MSH-10 when the message can take the fast path, else None."""
    codec = profile.read_codec
    try:
        if not frame.isascii():
            frame.decode(codec)  # bytes the declared character set cannot read: the slow path says AE
        control_id = raw_id.decode(codec)
    except UnicodeDecodeError:
        return None
    if not control_id or not control_id.isprintable() or control_id != control_id.strip():
        return None
    for special in profile.specials:
        if special in control_id:
            return None
    return control_id
