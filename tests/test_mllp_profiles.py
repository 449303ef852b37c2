"""The listener's fast path (header profiles) gives exactly what the slow path gives: the same
verdict and, once stored, the same ACK bytes but for MSH-7 (time) and MSH-10 (a new id)."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.errors import CharsetError
from gateway.hl7.charset import codec_for
from gateway.mllp.framing import FrameDecoder
from gateway.mllp.profiles import Profiled, Profiles
from gateway.mllp.triage import IntakeRules, Triage, Verdict
from gateway.queue.entry import Received

RULES = IntakeRules(
    supports=lambda code, trigger: (code, trigger) in {("ADT", "A01"), ("ORU", "R01")},
    known_codes=frozenset({"ADT", "ORU"}),
)
CHARSETS = ["", "ASCII", "UNICODE UTF-8", "8859/1", "8859/7", "8859/8", "BIG-5", "KS X 1001", "LATIN9", "8859/1~X"]
ENCODINGS = ["^~\\&", "^~\\&#", "$%*+"]
text = st.text(alphabet=st.sampled_from(list("AZaz09 .-_^~\\&#$%*+|éø\x01\t")), max_size=8)
plain = st.from_regex(r"[A-Za-z0-9.-]{1,10}", fullmatch=True)


def header(seps: str, fields: dict[int, str]) -> str:
    """An MSH line with separators ``seps`` (field separator first) and MSH-n = fields[n]."""
    values = [fields.get(n, "").replace(seps[0], "") for n in range(3, 22)]
    while values and not values[-1]:
        values.pop()
    return f"MSH{seps}" + seps[0].join(["", *values])


def normalised(reply: bytes) -> list[bytes]:
    """The reply's frames with MSH-7 and MSH-10 blanked (the time and the ACK's own new id)."""
    out = []
    for payload in FrameDecoder().feed(reply):
        if payload.startswith(b"MSH"):
            line, _, rest = payload.partition(b"\r")
            fields = line.split(payload[3:4])
            fields[6] = fields[9] = b""
            payload = payload[3:4].join(fields) + b"\r" + rest
        out.append(payload)
    return out


def check_same(profiles: Profiles, frame: bytes) -> bool:
    """Assert the fast path agrees with the slow path for ``frame``; True if it was taken."""
    expected = profiles.triage.decide(frame)
    judged = profiles.judge(frame)
    if isinstance(judged, Verdict):
        assert judged == expected
        return False
    assert isinstance(judged, Profiled)
    profile, control_id = judged.profile, judged.control_id
    assert profile.verdict_for(control_id) == expected
    slow = expected.reply(stored=True, commit_acks=profiles.commit_acks)
    assert normalised(judged.reply(stored=True, commit_acks=profiles.commit_acks)) == normalised(slow)
    # Both paths say the same when the commit failed, and queue the same.
    failed = expected.reply(stored=False, commit_acks=profiles.commit_acks, storage_problem="redis down")
    assert normalised(judged.reply(stored=False, commit_acks=profiles.commit_acks, storage_problem="redis down")) == (
        normalised(failed)
    )
    fast, slow_received = judged.received(frame, "peer"), expected.received(frame, "peer")
    assert [getattr(fast, a) for a in Received.__slots__] == [getattr(slow_received, a) for a in Received.__slots__]
    return True


@settings(max_examples=300, deadline=None)
@given(
    field_sep=st.sampled_from("|#!"),
    encoding=st.sampled_from(ENCODINGS),
    sender=st.tuples(st.one_of(plain, text), text),
    receiver=st.tuples(text, st.one_of(plain, text)),
    message_type=st.sampled_from(["ADT^A01^ADT_A01", "ORU^R01", "ADT^A01", "ORU^R01", "ADT^A08", "ACK^A01", "MDM^T02"]),
    control_ids=st.lists(st.one_of(plain, plain, text), min_size=4, max_size=4),
    processing=st.sampled_from(["P", "T", "P^T", "P", "X"]),
    version=st.sampled_from(["2.5.1", "2.3", "2.7", "2.5.1^x", "2.9"]),
    modes=st.tuples(st.sampled_from(["", "AL", "NE", "SU", "ER"]), st.sampled_from(["", "AL", "NE"])),
    charset=st.sampled_from(CHARSETS),
    body=st.text(max_size=12),
    body_codec=st.sampled_from(["declared", "utf-8", "latin-1"]),
    extra=st.sampled_from(["", "\n", "\rPID|1"]),
    commit_acks=st.booleans(),
)
def test_fast_path_gives_the_slow_paths_verdict_and_ack(
    field_sep, encoding, sender, receiver, message_type, control_ids, processing, version, modes, charset, body,
    body_codec, extra, commit_acks,
):  # fmt: skip
    profiles = Profiles(Triage(RULES), commit_acks=commit_acks)
    seps = field_sep + encoding
    component, repetition = encoding[0], encoding[1]
    for n, control_id in enumerate(control_ids):
        fields = {
            3: sender[0], 4: sender[1], 5: receiver[0], 6: receiver[1], 7: f"2024010112000{n}",
            9: message_type.replace("^", component), 10: control_id, 11: processing.replace("^", component),
            12: version.replace("^", component), 15: modes[0], 16: modes[1], 18: charset.replace("~", repetition),
        }  # fmt: skip
        line = header(seps, fields)
        try:
            codec = codec_for(charset.split("~", 1)[0]) if body_codec == "declared" else body_codec
        except CharsetError:
            codec = "utf-8"
        frame = (line + extra + "\rPID|1||" + body + "\r").encode(codec, errors="replace")
        event(f"fast path: {check_same(profiles, frame)}")


def sample(control_id: str, *, time: str = "20240101120000", charset: str = "", body: bytes = b"Eve") -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|GW|GWF|{time}||ADT^A01^ADT_A01|{control_id}|P|2.5.1||||||{charset}\r".encode()
        + b"PID|1||42||"
        + body
        + b"\r"
    )


def test_a_senders_messages_take_the_fast_path_from_the_second_on():
    profiles = Profiles(Triage(RULES))
    taken = [check_same(profiles, sample(f"C{n}", time=f"2024010112000{n}")) for n in range(4)]
    # The first sighting is only remembered, the second is learnt: from the third on, fast.
    assert taken == [False, False, True, True]


def test_what_the_fast_path_must_leave_to_the_slow_path():
    profiles = Profiles(Triage(RULES))
    for n in range(2):
        check_same(profiles, sample(f"C{n}"))
    assert check_same(profiles, sample("C9"))
    for control_id in ("A^B", "A~B", "A\\T\\B", " C1", "C1 ", "C\x011", ""):
        assert not check_same(profiles, sample(control_id)), control_id
    assert not check_same(profiles, sample("C10", body=b"\xff\xfe"))  # invalid UTF-8: AE 102
    assert check_same(profiles, sample("C11") + b"\n")  # fast: only the header line counts
    latin = [sample(f"L{n}", charset="8859/1", body="é".encode("latin-1")) for n in range(3)]
    assert [check_same(profiles, frame) for frame in latin] == [False, False, True]
    big5 = [sample(f"B{n}", charset="BIG-5") for n in range(3)]
    assert [check_same(profiles, frame) for frame in big5] == [False, False, False]  # multibyte: never fast


def test_the_cache_is_bounded():
    profiles = Profiles(Triage(RULES), max_profiles=4)
    for n in range(20):
        for m in range(2):
            check_same(profiles, sample(f"C{m}").replace(b"|LAB|", f"|LAB{n}|".encode()))
    assert len(profiles._profiles) <= 4 and len(profiles._seen) <= 4


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b"MSH" + b) | st.binary(max_size=60), min_size=1, max_size=4))
def test_any_bytes_get_the_slow_paths_verdict(frames):
    profiles = Profiles(Triage(RULES))
    for frame in frames:
        for _ in range(3):  # seen, learnt, then judged by the fast path if it can be
            check_same(profiles, frame)
