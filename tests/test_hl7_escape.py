"""HL7 escape sequences (chapter 2.7): escape and unescape are inverse for any text and separators."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hl7.escape import DEFAULT_SEPARATORS, Separators, escape, unescape

PROPERTY = settings(max_examples=200, deadline=None)


@st.composite
def separators(draw: st.DrawFn) -> Separators:
    """Any valid delimiter set: distinct printable punctuation, 4 or 5 encoding characters."""
    count = draw(st.sampled_from([5, 6]))
    chars = draw(st.lists(st.sampled_from(string.punctuation), min_size=count, max_size=count, unique=True))
    return Separators(*chars[:5], truncation=chars[5] if count == 6 else "")


@PROPERTY
@given(st.text(), separators())
def test_unescape_inverts_escape(text, seps):
    assert unescape(escape(text, seps), seps) == text


@PROPERTY
@given(st.text(), separators())
def test_escaped_text_has_no_delimiters_or_controls(text, seps):
    escaped = escape(text, seps)
    # Outside escape sequences no delimiter may remain; inside them only the escape char itself.
    between = escaped.split(seps.escape)[::2]
    for chunk in between:
        assert not set(chunk) & set(seps.field + seps.component + seps.repetition + seps.subcomponent + seps.truncation)
    assert not any(c < " " and c != "\t" for c in escaped)  # 0x0B/0x1C would break MLLP


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (r"a\F\b", "a|b"),
        (r"a\S\b", "a^b"),
        (r"a\T\b", "a&b"),
        (r"a\R\b", "a~b"),
        (r"a\E\b", "a\\b"),
        (r"\X0D0A\ ", "\r\n "),
        ("\\XC3A9\\", "é"),  # UTF-8 bytes
        ("\\XE9\\", "é"),  # not UTF-8: read as Latin-1
        (r"\xc3a9\ ", "\\xc3a9\\ "),  # escape codes are upper case; unknown ones are kept
        (r"line\.br\next", "line\nnext"),
        (r"\H\bold\N\ ", "bold "),  # highlighting carries no text
        (r"keep \Q\ this", "keep \\Q\\ this"),
        (r"bad hex \XZZ\ ", "bad hex \\XZZ\\ "),
        (r"odd \X0\ ", "odd \\X0\\ "),
        ("lone \\ escape", "lone \\ escape"),
        ("trailing \\", "trailing \\"),
        ("no escapes", "no escapes"),
        (r"\P\ ", "\\P\\ "),  # no truncation character declared: kept
    ],
)
def test_known_sequences(raw, text):
    assert unescape(raw) == text


def test_truncation_and_custom_separators():
    seps = Separators(field="!", component="@", repetition="$", escape="%", subcomponent="*", truncation="#")
    assert unescape("%F%%S%%T%%R%%E%%P%", seps) == "!@*$%#"
    assert escape("!@*$%#\\|^", seps) == "%F%%S%%T%%R%%E%%P%\\|^"


def test_escape_encodes_line_breaks_and_block_characters_as_hex():
    assert escape("a\rb\nc\x0bd\x1ce\tf") == r"a\X0D\b\X0A\c\X0B\d\X1C\e" + "\tf"
    assert escape("plain text") == "plain text"
    assert escape("") == "" and unescape("") == ""


def test_default_separators():
    assert DEFAULT_SEPARATORS.encoding_characters == "^~\\&"
    assert DEFAULT_SEPARATORS.specials == "|^~\\&"
