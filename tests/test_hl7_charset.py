"""Decoding by MSH-18 (HL7 table 0211): right text for declared sets, CharsetError otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import CharsetError, ParseError
from gateway.hl7.charset import codec_for, declared_charset, decode_message
from gateway.hl7.message import parse


def message(charset: str, body: bytes, field_sep: bytes = b"|") -> bytes:
    """An ADT whose MSH-18 is ``charset`` and whose PID-5 is ``body``."""
    f = field_sep
    header = f.join(
        [b"MSH", b"^~\\&", b"App", b"Fac", b"Rcv", b"RFac", b"20240101", b"", b"ADT^A01", b"1", b"P", b"2.5.1"]
        + [b""] * 5
        + [charset.encode("ascii")]
    )
    return header + b"\rPID" + f + b"1" + f + f + b"42" + f + f + body + b"\r"


def test_latin1_with_8859_1():
    raw = message("8859/1", "Müller^José".encode("latin-1"))
    assert parse(decode_message(raw)).get("PID-5.1") == "Müller"
    assert parse(decode_message(raw)).get("PID-5.2") == "José"


def test_other_8859_parts():
    assert "€" in decode_message(message("8859/15", "€".encode("iso8859-15")))
    assert "Ω" in decode_message(message("8859/7", "Ω".encode("iso8859-7")))
    assert "Ж" in decode_message(message("8859/5", "Ж".encode("iso8859-5")))


@pytest.mark.parametrize("charset", ["UNICODE UTF-8", "UNICODE", "", "unicode  utf-8", "UTF-8"])
def test_utf8(charset):
    text = "Zoë 日本 😀"
    assert text in decode_message(message(charset, text.encode("utf-8")))


def test_first_repetition_of_msh18_counts():
    raw = message("8859/1~UNICODE UTF-8", "é".encode("latin-1"))
    assert declared_charset(raw) == "8859/1"
    assert "é" in decode_message(raw)


def test_field_separator_is_read_from_byte_3():
    raw = message("8859/1", "é".encode("latin-1"), field_sep=b"!")
    assert declared_charset(raw) == "8859/1"
    assert "é" in decode_message(raw)


def test_invalid_utf8_raises_with_offset():
    raw = message("UNICODE UTF-8", b"ok\xffno")
    with pytest.raises(CharsetError) as caught:
        decode_message(raw)
    err = caught.value
    assert isinstance(err, ParseError)
    assert (err.code, err.segment, err.field) == ("102", "MSH", 18)
    offset = raw.index(b"\xff")
    assert f"offset {offset} " in str(err) and "0xFF" in str(err)


def test_invalid_utf8_without_msh18_raises():
    with pytest.raises(CharsetError, match="absent"):
        decode_message(message("", b"caf\xe9"))


def test_ascii_with_high_bytes():
    latin1 = message("ASCII", "café".encode("latin-1"))
    with pytest.raises(CharsetError):
        decode_message(latin1)
    with pytest.raises(CharsetError):
        decode_message(latin1, strict_ascii=True)
    # Declared ASCII but valid UTF-8 (as in the IG's ORM/OML samples): accepted unless strict.
    utf8 = message("ASCII", "café".encode())
    assert "café" in decode_message(utf8)
    with pytest.raises(CharsetError) as caught:
        decode_message(utf8, strict_ascii=True)
    assert "ASCII" in str(caught.value)


@pytest.mark.parametrize("charset", ["EBCDIC", "8859/12", "KOI8-R"])
def test_unknown_charset(charset):
    with pytest.raises(CharsetError) as caught:
        decode_message(message(charset, b"x"))
    assert caught.value.code == "103" and caught.value.field == 18
    assert charset in str(caught.value) and "table 0211" in str(caught.value)


@pytest.mark.parametrize("charset", ["UNICODE UTF-16", "UNICODE UTF-32", "ISO IR87"])
def test_unsupported_charset(charset):
    with pytest.raises(CharsetError, match="not supported") as caught:
        decode_message(message(charset, b"x"))
    assert caught.value.code == "103"


def test_utf16_byte_order_mark_is_refused():
    with pytest.raises(CharsetError, match="UTF-16"):
        decode_message(message("UNICODE UTF-16", b"x").decode("ascii").encode("utf-16"))


def test_utf8_byte_order_mark_is_dropped_and_offsets_count_it():
    assert decode_message(b"\xef\xbb\xbf" + message("", b"x")).startswith("MSH|")
    raw = b"\xef\xbb\xbf" + message("", b"\xff")
    offset = raw.index(b"\xff")
    with pytest.raises(CharsetError, match=f"offset {offset} "):
        decode_message(raw)


def test_batch_header_reads_msh18_of_the_first_message():
    raw = b"FHS|^~\\&|x\rBHS|^~\\&|x\r" + message("8859/1", "é".encode("latin-1"))
    assert declared_charset(raw) == "8859/1"
    assert "é" in decode_message(raw)


@pytest.mark.parametrize("raw", [b"", b"MSH", b"MSH|^~\\&|a|b\rPID|1", b"junk", b"\x0b\r\nMSH|^~\\&"])
def test_no_msh18(raw):
    assert declared_charset(raw) == ""


def test_codec_for():
    assert codec_for("8859/1") == "iso8859-1"
    assert codec_for(" ascii ") == "ascii"
    assert codec_for("") == "utf-8"
    assert codec_for("GB 18030-2000") == "gb18030"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"", b"MSH|^~\\&|", message("8859/1", b""), message("ASCII", b"")]), st.binary())
def test_arbitrary_bytes_raise_only_charset_error(prefix, data):
    try:
        assert isinstance(decode_message(prefix + data), str)
    except CharsetError:
        pass
