"""HL7 v2 escape sequences (chapter 2.7): decoded when a value is read, encoded when one is written."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Separators:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    #: v2.7+ truncation character (MSH-2 fifth character), or "" when absent.
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation

    @property
    def specials(self) -> str:
        return self.field + self.encoding_characters


DEFAULT_SEPARATORS = Separators()


def _hex_to_text(hexdigits: str) -> str | None:
    if len(hexdigits) % 2 or not hexdigits:
        return None
    try:
        data = bytes.fromhex(hexdigits)
    except ValueError:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def unescape(text: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Decode ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\ \\Xhh..\\ \\.br\\``; formatting codes are dropped,
    unknown sequences are kept as written."""
    esc = seps.escape
    if not esc or esc not in text:
        return text
    simple = {
        "F": seps.field,
        "S": seps.component,
        "T": seps.subcomponent,
        "R": seps.repetition,
        "E": esc,
        "P": seps.truncation,
    }
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != esc:
            j = text.find(esc, i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            i = j
            continue
        end = text.find(esc, i + 1)
        if end < 0:  # a lone escape character: keep it literally
            out.append(text[i:])
            break
        code = text[i + 1 : end]
        if code in simple and simple[code]:
            out.append(simple[code])
        elif code[:1] == "X":
            decoded = _hex_to_text(code[1:])
            out.append(decoded if decoded is not None else text[i : end + 1])
        elif code == ".br":
            out.append("\n")
        elif code in ("H", "N") or code[:1] in ("C", "M") or code[:1] == "." or code[:1] == "Z":
            pass  # highlighting, charset switches, formatting and local codes carry no text
        else:
            out.append(text[i : end + 1])
        i = end + 1
    return "".join(out)


def escape(text: str, seps: Separators = DEFAULT_SEPARATORS) -> str:
    """Encode delimiter characters so that ``text`` can be written as one HL7 value."""
    esc = seps.escape
    table = {
        esc: f"{esc}E{esc}",
        seps.field: f"{esc}F{esc}",
        seps.component: f"{esc}S{esc}",
        seps.subcomponent: f"{esc}T{esc}",
        seps.repetition: f"{esc}R{esc}",
        # Segment terminators cannot appear inside a value.
        "\r": f"{esc}X0D{esc}",
        "\n": f"{esc}X0A{esc}",
    }
    if seps.truncation:
        table[seps.truncation] = f"{esc}P{esc}"
    if text.isprintable() and not any(c in text for c in table):
        return text
    return "".join(table.get(c) or _escape_control(c, esc) for c in text)


def _escape_control(char: str, esc: str) -> str:
    """Other C0 controls (0x0B, 0x1C would break MLLP framing) as ``\\Xhh\\``; tab stays literal."""
    if char < " " and char != "\t":
        return f"{esc}X{ord(char):02X}{esc}"
    return char
