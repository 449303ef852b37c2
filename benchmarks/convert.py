"""Messages per second through decode + parse + convert + validate + serialize, on one core.

    python benchmarks/convert.py [--seconds 3]

Workloads: the HL7 v2-to-FHIR IG ADT_A01 + ORU_R01 pair, and every ADT^A01/A04/A08 and ORU^R01
sample. "warm" repeats the same messages, so the converter's memoized maps and the validation cache
answer (a feed resending or updating the same patients, codes and units comes close to this);
"cold" clears both before every message: the cost of content never seen before. No external peers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import validate  # noqa: E402
from gateway.convert.engine import Converter  # noqa: E402
from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse  # noqa: E402

SAMPLES = ROOT / "samples"
PAIR = ["v2-to-fhir-ig/ADT_A01.hl7", "v2-to-fhir-ig/ORU_R01.hl7"]


def supported_samples(converter: Converter) -> list[str]:
    found = []
    for path in sorted(SAMPLES.glob("*/*.hl7")):
        code, trigger, _ = parse(decode_message(path.read_bytes())).message_type
        if converter.supports(code, trigger):
            found.append(str(path.relative_to(SAMPLES)))
    return found


def pipeline(converter: Converter) -> Callable[[bytes], bytes]:
    def run(raw: bytes) -> bytes:
        bundle = converter.convert(parse(decode_message(raw)))
        validate.validate_bundle(bundle)
        return orjson.dumps(bundle)

    return run


def measure(run: Callable[[bytes], bytes], converter: Converter, messages: list[bytes], seconds: float, cold: bool) -> float:
    for raw in messages:  # warm up imports, caches and the validation cache
        run(raw)
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for raw in messages:
            if cold:
                validate.clear_cache()
                converter.clear_caches()
            run(raw)
        done += len(messages)
    return done / (time.perf_counter() - start)


def stage_times(converter: Converter, messages: list[bytes], rounds: int = 200) -> dict[str, float]:
    """Mean microseconds per message for each stage (warm validation cache)."""
    totals = dict.fromkeys(("decode+parse", "convert", "validate", "serialize"), 0.0)
    for _ in range(rounds):
        for raw in messages:
            t0 = time.perf_counter()
            message = parse(decode_message(raw))
            t1 = time.perf_counter()
            bundle = converter.convert(message)
            t2 = time.perf_counter()
            validate.validate_bundle(bundle)
            t3 = time.perf_counter()
            orjson.dumps(bundle)
            t4 = time.perf_counter()
            for key, spent in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                totals[key] += spent
    count = rounds * len(messages)
    return {key: spent / count * 1e6 for key, spent in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()

    start = time.perf_counter()
    converter = Converter.load()
    print(f"mappings loaded and compiled in {(time.perf_counter() - start) * 1000:.0f} ms")
    run = pipeline(converter)
    workloads = {
        "IG ADT_A01 + ORU_R01": [(SAMPLES / p).read_bytes() for p in PAIR],
        "all ADT A01/A04/A08 + ORU R01 samples": [(SAMPLES / p).read_bytes() for p in supported_samples(converter)],
    }
    for name, messages in workloads.items():
        warm = measure(run, converter, messages, args.seconds, cold=False)
        cold = measure(run, converter, messages, args.seconds, cold=True)
        print(f"{name} ({len(messages)} messages): {warm:,.0f} msg/s warm cache, {cold:,.0f} msg/s cold cache")
        stages = stage_times(converter, messages, rounds=max(1, 400 // len(messages)))
        print("  per message: " + ", ".join(f"{k} {v:.0f} us" for k, v in stages.items()))


if __name__ == "__main__":
    main()
