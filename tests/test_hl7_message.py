"""The lazy ER7 parser: numbering, nesting, escaping, line endings, and only ParseError on bad input."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ParseError
from gateway.hl7.charset import decode_message
from gateway.hl7.escape import Separators, escape
from gateway.hl7.message import Path, parse, parse_path, read_separators
from tests.conftest import SAMPLES, sample

PROPERTY = settings(max_examples=200, deadline=None)
SAMPLE_FILES = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.hl7"))

ADT = (
    "MSH|^~\\&|SndApp^1.2.3^ISO|SndFac|RcvApp|RcvFac|20240101120000||ADT^A01^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A01|20240101120000\r"
    "PID|1||123^^^Hosp&1.2.3&ISO^MR~456^^^Other^SS||Doe^John^Q||19700101|M\r"
    "OBX|1|TX|||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\r"
)


@st.composite
def separators(draw: st.DrawFn) -> Separators:
    count = draw(st.sampled_from([5, 6]))
    chars = draw(st.lists(st.sampled_from(string.punctuation), min_size=count, max_size=count, unique=True))
    return Separators(*chars[:5], truncation=chars[5] if count == 6 else "")


def test_line_endings_give_the_same_segments():
    variants = [ADT, ADT.replace("\r", "\n"), ADT.replace("\r", "\r\n"), "\r\n" + ADT + "\n\n"]
    parsed = [[seg.raw for seg in parse(v).segments] for v in variants]
    assert parsed[0] == parsed[1] == parsed[2] == parsed[3]
    assert [s[:3] for s in parsed[0]] == ["MSH", "EVN", "PID", "OBX"]


def test_msh_numbering():
    msg = parse(ADT)
    msh = msg.msh
    assert msh.field_raw(1) == "|" and msh.get(1) == "|"
    assert msh.field_raw(2) == "^~\\&" and msh.get(2) == "^~\\&"  # MSH-2 is never unescaped or split
    assert msh.get(3, 2) == "1.2.3" and msg.get("MSH-3.3") == "ISO"
    assert msh.field_raw(9) == "ADT^A01^ADT_A01"
    assert msg.message_type == ("ADT", "A01", "ADT_A01")
    assert msg.control_id == msg.get("MSH-10") == "CTRL-1"
    assert msg.version == "2.5.1" and msg.get("MSH-12") == "2.5.1"
    assert msg.sender == "SndApp|SndFac"
    assert len(msh) == 12


def test_five_encoding_characters():
    msg = parse(ADT.replace("MSH|^~\\&|", "MSH|^~\\&#|", 1))
    assert msg.separators.truncation == "#"
    assert msg.msh.get(2) == "^~\\&#"
    assert msg.get("MSH-3.1") == "SndApp" and msg.control_id == "CTRL-1"
    assert parse("MSH|^~\\&#|a\\P\\b|").get("MSH-3") == "a#b"


def test_repetitions_components_subcomponents():
    pid = parse(ADT).segment("PID")
    assert pid is not None
    ids = pid.repetitions(3)
    assert [r[1].value for r in ids] == ["123", "456"]
    assert ids[0][4][2].value == "1.2.3" and ids[0][4].first == "Hosp"
    assert ids[1][5].value == "SS" and ids[1][4][2].value == ""
    assert pid.field(3).raw == "123^^^Hosp&1.2.3&ISO^MR"  # field() is the first repetition
    assert pid.get(5, 2) == "John" and pid.get(3, 4, 3) == "ISO"
    assert parse(ADT).get("PID-3.4.2") == "1.2.3"
    assert pid.repetitions(2) == [] and not pid.field(2) and pid.field(99).value == ""
    assert [p.value for p in pid.field(5).parts()] == ["Doe", "John", "Q"]


def test_escaped_values_decode_on_read_only():
    obx = parse(ADT).segment("OBX")
    assert obx is not None
    assert obx.field_raw(5) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\"
    assert obx.get(5) == "a|b^c&d~e\\fA"


def test_null_value_is_falsy():
    pid = parse('MSH|^~\\&|\rPID|1|""|x').segment("PID")
    assert pid is not None and not pid.field(2) and pid.field(3)


def test_all_and_missing_segments():
    msg = parse(ADT + "NTE|1\rNTE|2\r")
    assert [s.get(1) for s in msg.all("NTE")] == ["1", "2"]
    assert msg.segment("ZZZ") is None and msg.all("ZZZ") == [] and msg.get("ZZZ-1") == ""
    assert msg.to_er7().split("\r")[-1] == "NTE|2"


def test_byte_order_mark_and_framing_leftovers_are_ignored():
    assert parse("\ufeff" + ADT).control_id == "CTRL-1"
    assert parse("\x0b" + ADT + "\x1c\r").control_id == "CTRL-1"


def test_short_header_line():
    msg = parse("MSH|^~\\&\rPID|1")
    assert msg.separators.component == "^" and msg.segment("PID") is not None


@pytest.mark.parametrize(
    ("text", "code", "field"),
    [
        ("", "100", None),
        ("PID|1|2", "100", None),
        ("MSH", "100", None),
        ("MSHA^~\\&|", "102", 1),
        ("MSH\x0b^~\\&|x", "102", 1),  # control characters would break framing when echoed
        ("MSH| ^~\\&|x", "102", 2),
        ("MSH|^~\\|x", "102", 2),
        ("MSH|^~\\&*!|x", "102", 2),
        ("MSH|^^\\&|x", "102", 2),
        ("MSH|^~\x1c&|x", "102", 2),
        ("MSH|^~\\&|x\rpid|1", "100", None),
        ("MSH|^~\\&|x\rPID^1", "100", None),
    ],
)
def test_unreadable_messages_raise_parse_error(text, code, field):
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert caught.value.code == code and caught.value.field == field


def test_read_separators_custom_set():
    seps = read_separators("MSH!@$%*#!rest")
    assert (seps.field, seps.component, seps.repetition, seps.escape, seps.subcomponent, seps.truncation) == (
        "!",
        "@",
        "$",
        "%",
        "*",
        "#",
    )


def test_parse_path():
    assert parse_path("PID-3.4.2") == Path("PID", 3, 4, 2)
    assert str(parse_path(" OBX-5 ")) == "OBX-5"
    with pytest.raises(ValueError):
        parse_path("PID.3")


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_parses(name):
    msg = parse(decode_message(sample(name)))
    code, trigger, _ = msg.message_type
    assert code and trigger and msg.control_id and msg.version
    assert msg.msh.name == "MSH" and len(msg.segments) > 1


def test_there_are_samples():
    assert len(SAMPLE_FILES) >= 140


leaf = st.text(max_size=8)
field_value = st.lists(st.lists(st.lists(leaf, min_size=1, max_size=3), min_size=1, max_size=3), min_size=1, max_size=3)


@PROPERTY
@given(
    separators(),
    st.lists(st.lists(field_value, max_size=4), min_size=1, max_size=4),
    st.sampled_from(["\r", "\n", "\r\n"]),
)
def test_values_written_escaped_read_back_exactly(seps, segments, terminator):
    """Any nesting of repetitions, components and subcomponents survives a write and a parse."""
    f, r, c, s = seps.field, seps.repetition, seps.component, seps.subcomponent

    def render(value: list[list[list[str]]]) -> str:
        return r.join(c.join(s.join(escape(text, seps) for text in comp) for comp in rep) for rep in value)

    lines = [f"MSH{f}{seps.encoding_characters}{f}App{f}Fac"]
    lines += ["ZZ1" + "".join(f + render(v) for v in fields) for fields in segments]
    msg = parse(terminator.join(lines))
    got = msg.all("ZZ1")
    assert len(got) == len(segments)
    for seg, fields in zip(got, segments):
        for n, value in enumerate(fields, start=1):
            reps = seg.repetitions(n)
            if render(value) == "":
                assert reps == []
                continue
            for rep, rep_value in zip(reps, value, strict=True):
                for ci, comp in enumerate(rep_value, start=1):
                    for si, text in enumerate(comp, start=1):
                        assert rep[ci][si].value == text


@PROPERTY
@given(st.sampled_from(["", "MSH|^~\\&|", "MSH|^~\\&#|", "MSH|", "FHS|^~\\&|", "MSH|^~\\&|a\rPID|"]), st.text())
def test_arbitrary_text_raises_only_parse_error(prefix, text):
    try:
        msg = parse(prefix + text)
    except ParseError:
        return
    msg.control_id, msg.message_type, msg.version, msg.sender, msg.to_er7()
    for seg in msg:
        for n in range(1, len(seg) + 2):
            for rep in seg.repetitions(n):
                _ = rep.first  # must not raise
                for comp in rep.parts():
                    [sub.value for sub in comp.parts()]
