"""Turn received bytes into text using the character set the message declares in MSH-18.

MSH-18 (chapter 2.14.9.18, HL7 table 0211) is read from the raw bytes before decoding: every
character set we accept is ASCII-compatible, so the header can be scanned byte by byte. MLLP
cannot carry UTF-16/UTF-32 (their bytes collide with the block characters), so those are refused.
"""

from __future__ import annotations

import functools
import re

from gateway.errors import CharsetError

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# HL7 table 0211 value -> Python codec. Absent MSH-18 means ASCII in the standard; UTF-8 is its
# superset and what senders actually use without declaring it.
_CODECS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "ascii",
    "ISO IR6": "ascii",  # ISO 646, the international reference version of ASCII
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",  # meant as UCS-2 by the standard, but in practice sent as UTF-8
    "UTF-8": "utf-8",  # not a table 0211 value, but a common spelling of "UNICODE UTF-8"
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    # 8859/12 does not exist; 8859/10..16 are not in table 0211 but are unambiguous.
    **{f"8859/{n}": f"iso8859-{n}" for n in (*range(1, 12), 13, 14, 15, 16)},
}
# In table 0211 but not transportable over MLLP, or needing ISO 2022 switching we do not implement.
_UNSUPPORTED = frozenset({"UNICODE UTF-16", "UNICODE UTF-32", "ISO IR14", "ISO IR87", "ISO IR159", "CNS 11643-1992"})
_LINE_END = re.compile(rb"[\r\n]")
_HEADER_START = re.compile(rb"(?:^|[\r\n])MSH")


def codec_for(charset: str) -> str:
    """The Python codec for an MSH-18 value ("" when absent); CharsetError if unknown or unsupported."""
    name = " ".join(charset.upper().split())
    codec = _CODECS.get(name)
    if codec is not None:
        return codec
    if name in _UNSUPPORTED:
        reason = f"character set {charset!r} in MSH-18 is not supported (MLLP needs an ASCII-compatible one)"
    else:
        reason = f"character set {charset!r} in MSH-18 is not in HL7 table 0211"
    raise CharsetError(reason, segment="MSH", field=18, code="103")  # 103: table value not found


@functools.lru_cache(maxsize=64)
def ack_codec(charset: str) -> str:
    """The codec an acknowledgement is written in: the message's MSH-18, or UTF-8 when that is unknown."""
    try:
        return codec_for(charset)
    except CharsetError:
        return "utf-8"


def declared_charset(raw: bytes) -> str:
    """MSH-18's first repetition as written, "" when absent or when there is no readable MSH."""
    text = raw.lstrip(b"\r\n\t \x0b")
    if not text.startswith(b"MSH"):
        # A batch (FHS/BHS first) declares the charset in each message's MSH.
        found = _HEADER_START.search(text)
        if found is None:
            return ""
        text = text[found.end() - 3 :]
    header = _LINE_END.split(text, 1)[0]
    if len(header) < 8:
        return ""
    fields = header.split(header[3:4])  # fields[0] "MSH", fields[1] MSH-2, fields[n] MSH-(n+1)
    if len(fields) < 18:
        return ""
    repetition = fields[1][1:2] or b"~"
    return fields[17].split(repetition, 1)[0].strip().decode("ascii", errors="replace")


def decode_message(raw: bytes, *, strict_ascii: bool = False) -> str:
    """Decode ``raw`` in the character set MSH-18 declares; CharsetError for bytes invalid in it.

    Unless ``strict_ascii``, a message declared ASCII is read as UTF-8 (its superset): senders,
    the v2-to-FHIR IG samples among them, declare ASCII and send UTF-8.
    """
    if raw.startswith(_UTF16_BOMS):
        raise CharsetError(
            "message is UTF-16 encoded (byte order mark); MLLP needs an ASCII-compatible character set",
            segment="MSH",
            field=18,
            code="103",
        )
    skipped = 0
    if raw.startswith(UTF8_BOM):
        raw, skipped = raw[len(UTF8_BOM) :], len(UTF8_BOM)
    charset = declared_charset(raw)
    codec = codec_for(charset)
    if codec == "ascii" and not strict_ascii:
        codec = "utf-8"
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        offset = exc.start + skipped
        declared = repr(charset) if charset else "absent, so UTF-8"
        raise CharsetError(
            f"byte 0x{raw[exc.start]:02X} at offset {offset} is not valid in the declared character "
            f"set (MSH-18 {declared})",
            segment="MSH",
            field=18,
            code="102",  # 102 data type error: the content does not conform to MSH-18
        ) from None
