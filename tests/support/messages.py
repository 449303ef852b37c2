"""HL7 v2 messages the tests build: each call a message of its own."""

from __future__ import annotations

ADT = "MSH|^~\\&|ADT|HOSP|GW|GW|{msh7}||ADT^A08^ADT_A01|{control}|P|2.5.1\r{evn}PID|1||{mrn}^^^HOSP^MR||{family}^Jane\r"


def adt(control: str, family: str, msh7: str = "20240501120000", evn2: str | None = None, mrn: str = "M1") -> bytes:
    """An ADT^A08 with MSH-10 ``control`` for Patient ``mrn`` named ``family``; EVN-2 when given."""
    evn = f"EVN|A08|{evn2}\r" if evn2 is not None else ""
    return ADT.format(msh7=msh7, control=control, evn=evn, mrn=mrn, family=family).encode()


def a04(number: int) -> bytes:
    """The ``number``-th of a stream of ADT^A04s, each with its own MSH-10 and Patient."""
    return (
        f"MSH|^~\\&|REG|HOSP|GW|GW|20240501{number:06d}||ADT^A04^ADT_A01|SINK-{number}|P|2.5.1\r"
        f"EVN|A04|20240501{number:06d}\r"
        f"PID|1||SINK{number}^^^HOSP^MR||Patient{number}^Pat||19800101|F\r"
    ).encode()
