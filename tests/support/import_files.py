"""Batch files the import tests build: sample and ADT^A04 messages in FHS/BHS ... BTS/FTS (chapter 2.10.3)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SAMPLES

#: Samples whose copies (unique MSH-10 and PID-3) the converter turns into a Patient found by that id.
PATIENT_SAMPLES = (
    "ADT_A01/ADT-A01-01.hl7",
    "ADT_A04/ADT-A04-01.hl7",
    "ADT_A08/ADT-A08-01.hl7",
    "ORU_R01/ORU-R01-01.hl7",
    "VXU_V04/ig-VXU_V04.hl7",
    "ADT_A04/ADT04-251.hl7",
)
#: Business identifiers the converter derives resource ids from: made unique per copy too.
_UNIQUE_FIELDS = {"PV1": (19,), "ORC": (2, 3), "OBR": (2, 3)}


def batch(messages: list[bytes], *, declared: int | None = None, control_id: str = "B1", file: bool = True) -> bytes:
    """``messages`` in one BHS batch (BTS-1 ``declared``, else the true count), inside FHS/FTS."""
    count = len(messages) if declared is None else declared
    head = b"FHS|^~\\&|LAB|HOSP|GW|GW|20240501120000||||F-" + control_id.encode() + b"\r" if file else b""
    tail = b"FTS|1\r" if file else b""
    body = b"".join(m if m.endswith(b"\r") else m + b"\r" for m in messages)
    bhs = b"BHS|^~\\&|LAB|HOSP|GW|GW|20240501120000||||" + control_id.encode() + b"\r"
    return head + bhs + body + b"BTS|" + str(count).encode() + b"\r" + tail


def a04(number: int, prefix: str = "IMP") -> bytes:
    """An ADT^A04 with MSH-10 ``<prefix>-<number>`` for its own Patient ``<prefix><number>``."""
    return (
        f"MSH|^~\\&|LAB|HOSP|GW|GW|20240501120000||ADT^A04^ADT_A01|{prefix}-{number}|P|2.5.1\r"
        f"EVN|A04|20240501120000\r"
        f"PID|1||{prefix}{number}^^^HOSP^MR||Patient{number}^Pat||19800101|F\r"
    ).encode()


def write_a04_batch(path: Path, count: int, prefix: str = "IMP") -> Path:
    """A file of ``count`` ADT^A04s in one batch, written in pieces (constant memory)."""
    with path.open("wb") as out:
        out.write(b"FHS|^~\\&|LAB|HOSP|GW|GW|20240501120000||||F1\rBHS|^~\\&|LAB|HOSP|GW|GW|20240501120000||||B1\r")
        for n in range(count):
            out.write(a04(n, prefix))
        out.write(f"BTS|{count}\rFTS|1\r".encode())
    return path


def sample_copy(sample: str, tag: str) -> tuple[bytes, str]:
    """A copy of ``sample`` with MSH-10 ``BATCH-<tag>`` and every PID-3 id suffixed with ``-<tag>``;
    returns (bytes, the first PID-3 id)."""
    text = (SAMPLES / sample).read_bytes().decode("utf-8", "replace").lstrip("\ufeff")
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]
    out, identifier = [], ""
    for segment in segments:
        fields = segment.split("|")
        if fields[0] == "MSH":
            fields[9] = f"BATCH-{tag}"
        elif fields[0] == "PID" and len(fields) > 3:
            reps = []
            for rep in fields[3].split("~"):
                comps = rep.split("^")
                comps[0] = f"{comps[0]}-{tag}"[:60]
                identifier = identifier or comps[0]
                reps.append("^".join(comps))
            fields[3] = "~".join(reps)
        for number in _UNIQUE_FIELDS.get(fields[0], ()):
            if len(fields) > number and fields[number]:
                comps = fields[number].split("~")[0].split("^")
                comps[0] = f"{comps[0]}-{tag}"[:60]
                fields[number] = "^".join(comps)
        out.append("|".join(fields))
    return ("\r".join(out) + "\r").encode(), identifier
