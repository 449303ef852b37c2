"""A stream of ADT messages that makes every kind of change the history feed carries: creates,
updates, deletes (A23 removes a visit) and merges (A40), each message with its own MSH-10."""

from __future__ import annotations

from datetime import datetime, timedelta

_START = datetime(2024, 5, 1, 8, 0, 0)
_MSH = "MSH|^~\\&|REG|HOSP|GW|GW|{ts}||{kind}|FEED-{n}|P|2.5.1\r"


def _pid(patient: int, version: int = 0) -> str:
    return f"PID|1||FEED{patient}^^^HOSP^MR||Family{patient}v{version}^Pat||19800101|F\r"


def _pv1(visit: int) -> str:
    return f"PV1|1|I|WARD^^^HOSP||||||||||||||||V{visit}^^^HOSP^VN\r"


def feed_message(n: int) -> bytes:
    """The ``n``-th message (0-based). Patients are created by A04 (n % 10 == 0, 2, 4, 6, 8, 9) or A01
    with a visit (n % 10 == 1); from n = 100, n % 10 == 5 updates Patient n - 55; from n = 200,
    n % 10 == 7 deletes the visit of n - 196; from n = 300, n % 50 == 3 merges Patient n - 2 (the
    one with a visit) into Patient n - 3 (its visit moves with it). Other messages are A04s."""
    ts = (_START + timedelta(seconds=n)).strftime("%Y%m%d%H%M%S")
    head = _MSH.format(ts=ts, n=n, kind="{kind}")
    evn = f"EVN|{{event}}|{ts}\r"
    if n % 10 == 1:
        return (head.format(kind="ADT^A01^ADT_A01") + evn.format(event="A01") + _pid(n) + _pv1(n)).encode()
    if n % 10 == 5 and n >= 100:
        body = head.format(kind="ADT^A08^ADT_A01") + evn.format(event="A08") + _pid(n - 55, 1) + "PV1|1|O\r"
        return body.encode()
    if n % 10 == 7 and n >= 200 and n % 50 != 47:  # n - 196 is never a merged-away Patient
        body = head.format(kind="ADT^A23^ADT_A21") + evn.format(event="A23") + _pid(n - 196) + _pv1(n - 196)
        return body.encode()
    if n % 50 == 3 and n >= 300:
        merge = f"MRG|FEED{n - 2}^^^HOSP^MR\r"
        return (head.format(kind="ADT^A40^ADT_A39") + evn.format(event="A40") + _pid(n - 3) + merge).encode()
    return (head.format(kind="ADT^A04^ADT_A01") + evn.format(event="A04") + _pid(n)).encode()
