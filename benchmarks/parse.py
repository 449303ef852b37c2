"""Parse cost per message: hl7apy, python-hl7 and gateway.hl7.message, on the same texts, one run.

Each parser parses the message and reads MSH-10 and PID-3 (first repetition, first component).
Ours splits fields lazily, so a second row shows it reading (unescaping) every field as well.
Run: ``python benchmarks/parse.py`` from the repository root (about a minute, hl7apy dominates).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hl7
from hl7apy.parser import parse_message as hl7apy_parse_message

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse as gateway_parse  # noqa: E402

SAMPLES = ROOT / "samples"
IG_ADT = "v2-to-fhir-ig/ADT_A01.hl7"


def read_gateway(text: str) -> tuple[str, str]:
    msg = gateway_parse(text)
    return msg.control_id, msg.get("PID-3.1")


def read_gateway_every_field(text: str) -> tuple[str, str]:
    """Ours is lazy; this walks every field of every segment to show the cost of a full read."""
    msg = gateway_parse(text)
    for segment in msg:
        for n in range(1, len(segment) + 1):
            for repetition in segment.repetitions(n):
                _ = repetition.value  # the read is what is measured
    return msg.control_id, msg.get("PID-3.1")


def read_python_hl7(text: str) -> tuple[str, str]:
    msg = hl7.parse(text)
    try:
        pid = msg.segment("PID")
    except KeyError:  # python-hl7 raises when the segment is absent
        return str(msg.segment("MSH")[10]), ""
    return str(msg.segment("MSH")[10]), str(pid[3][0][0])


def _find(element: Any, name: str) -> Any:
    """hl7apy nests segments in groups (find_groups=True): search the tree for the first ``name``."""
    for child in element.children:
        if child.name == name:
            return child
        if child.classname == "Group":
            found = _find(child, name)
            if found is not None:
                return found
    return None


def read_hl7apy(text: str) -> tuple[str, str]:
    msg = hl7apy_parse_message(text)  # defaults: tolerant validation, find_groups=True
    pid = _find(msg, "PID")
    return msg.msh.msh_10.value, pid.pid_3.pid_3_1.value if pid is not None else ""


PARSERS: dict[str, Callable[[str], tuple[str, str]]] = {
    "gateway.hl7.message.parse": read_gateway,
    "  same, reading every field": read_gateway_every_field,
    "python-hl7 hl7.parse": read_python_hl7,
    "hl7apy parse_message": read_hl7apy,
}
# Seconds of measuring per (parser, corpus); at ~30-50 ms per message hl7apy gets one pass of the
# samples (several seconds) and a second's worth of repeats of the single IG message.
BUDGET = {
    "gateway.hl7.message.parse": 2.0,
    "  same, reading every field": 2.0,
    "python-hl7 hl7.parse": 2.0,
    "hl7apy parse_message": 1.0,
}


def load_corpus() -> dict[str, str]:
    """Every sample, decoded by MSH-18 and CR-terminated (python-hl7 and hl7apy need CR)."""
    corpus = {}
    for path in sorted(SAMPLES.rglob("*.hl7")):
        text = decode_message(path.read_bytes())
        corpus[path.relative_to(SAMPLES).as_posix()] = text.replace("\r\n", "\r").replace("\n", "\r")
    return corpus


def usable(reader: Callable[[str], tuple[str, str]], texts: dict[str, str]) -> set[str]:
    ok = set()
    for name, text in texts.items():
        try:
            reader(text)
            ok.add(name)
        except Exception:
            pass
    return ok


def measure(reader: Callable[[str], tuple[str, str]], texts: list[str], budget: float) -> float:
    """Mean seconds per message: at least one full pass, more until ``budget`` seconds are spent."""
    for text in texts[:3]:
        reader(text)  # warm caches (hl7apy loads its version libraries lazily)
    count, started = 0, time.perf_counter()
    while True:
        for text in texts:
            reader(text)
        count += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            return elapsed / count


def main() -> None:
    corpus = load_corpus()
    handled = {name: usable(reader, corpus) for name, reader in PARSERS.items()}
    common = sorted(set.intersection(*handled.values()))
    for name, ok in handled.items():
        failed = sorted(set(corpus) - ok)
        note = (
            f" (fails on {len(failed)}: {', '.join(failed[:4])}{' ...' if len(failed) > 4 else ''})" if failed else ""
        )
        print(f"{name.strip()}: parses {len(ok)}/{len(corpus)} samples{note}")
    print(f"python {sys.version.split()[0]}; timings on the {len(common)} samples all three parse\n")

    scenarios = {f"IG {IG_ADT}": [corpus[IG_ADT]], f"all samples ({len(common)})": [corpus[n] for n in common]}
    for title, texts in scenarios.items():
        print(title)
        print(f"  {'parser':<28}{'us/msg':>12}{'msgs/s':>12}{'x ours':>10}")
        results = {name: measure(reader, texts, BUDGET[name]) for name, reader in PARSERS.items()}
        ours = results["gateway.hl7.message.parse"]
        for name, seconds in results.items():
            print(f"  {name:<28}{seconds * 1e6:>12.1f}{1 / seconds:>12.0f}{seconds / ours:>10.1f}")
        print()


if __name__ == "__main__":
    main()
