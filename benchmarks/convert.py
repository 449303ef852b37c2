"""Messages per second on one core through decode + parse + convert + validate + serialize, ours and
the peer's (hl7v2-fhir-bridge from PyPI, MIT), on the same messages.

    python benchmarks/convert.py [--seconds 3] [--no-peer]

Workloads: the HL7 v2-to-FHIR IG ADT_A01 + ORU_R01 pair; the corpus mix (every message of
samples/ms-fhir-converter and samples/v2-to-fhir-ig, 60 trigger events); and the messages of the
corpus that the peer converts too, where throughput and resources made are compared. "warm"
repeats the same messages, so the converter's memoized maps and the validation cache (each distinct
resource validated once, keyed on its canonical JSON) answer, as for a feed resending or updating
the same patients, codes and units; "cold" clears both before every message. The peer runs in a
virtual environment of its own, created on first use under ~/.cache/hl7gw-bench (or
$HL7GW_BENCH_CACHE), with ``pip install hl7v2-fhir-bridge``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import fhirjson, validate  # noqa: E402
from gateway.convert.runtime.engine import Converter  # noqa: E402
from gateway.hl7.charset import decode_message  # noqa: E402
from gateway.hl7.message import parse  # noqa: E402

SAMPLES = ROOT / "samples"
PAIR = [SAMPLES / "v2-to-fhir-ig/ADT_A01.hl7", SAMPLES / "v2-to-fhir-ig/ORU_R01.hl7"]
CORPUS = sorted((SAMPLES / "ms-fhir-converter").glob("*.hl7")) + sorted((SAMPLES / "v2-to-fhir-ig").glob("*.hl7"))
PEER_PACKAGE = "hl7v2-fhir-bridge==0.1.0"


def pipeline(converter: Converter) -> Callable[[bytes], dict]:
    def run(raw: bytes) -> dict:
        bundle = converter.convert(parse(decode_message(raw)))
        validate.validate_bundle(bundle)
        fhirjson.dumps(bundle)
        return bundle

    return run


def measure(
    run: Callable[[bytes], dict], converter: Converter, messages: list[bytes], seconds: float, cold: bool
) -> float:
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


def resources_made(run: Callable[[bytes], dict], raw: bytes) -> int:
    return sum(1 for entry in run(raw)["entry"] if "resource" in entry)


def peer_python() -> Path | None:
    """The peer's virtual environment's python, created (and the package installed) on first use."""
    cache = Path(os.environ.get("HL7GW_BENCH_CACHE", Path.home() / ".cache" / "hl7gw-bench"))
    venv = cache / "peer-venv"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import v2fhir"], capture_output=True).returncode == 0:
        return python
    cache.mkdir(parents=True, exist_ok=True)
    steps = ([sys.executable, "-m", "venv", str(venv)], [str(python), "-m", "pip", "install", "-q", PEER_PACKAGE])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"peer: could not install {PEER_PACKAGE} ({' '.join(step[:3])}): {done.stderr.strip()[-300:]}")
            return None
    return python


def run_peer(python: Path, paths: list[Path], seconds: float) -> dict:
    script = Path(__file__).with_name("peer_bridge.py")
    done = subprocess.run(
        [str(python), str(script), "--seconds", str(seconds), *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--no-peer", action="store_true", help="measure only hl7gw")
    args = parser.parse_args()

    start = time.perf_counter()
    # Three corpus messages carry segments their MSH-9 type has no place for; by default they are
    # refused (a dead letter), so the mix is measured as a sender set to "note" would be converted.
    converter = Converter.load(unplaced="note")
    print(
        f"mappings loaded and compiled in {(time.perf_counter() - start) * 1000:.0f} ms "
        f"({len(converter.plans)} trigger events)"
    )
    run = pipeline(converter)
    python = None if args.no_peer else peer_python()
    peer_corpus = run_peer(python, CORPUS, 0.1)["messages"] if python else {}
    shared = [p for p in CORPUS if peer_corpus.get(str(p), {}).get("ok")]
    workloads = {"IG ADT_A01 + ORU_R01": PAIR, "corpus mix": CORPUS}
    if shared:
        workloads["messages the peer converts too"] = shared
    for name, paths in workloads.items():
        messages = [p.read_bytes() for p in paths]
        warm = measure(run, converter, messages, args.seconds, cold=False)
        cold = measure(run, converter, messages, args.seconds, cold=True)
        made = sum(resources_made(run, raw) for raw in messages) / len(messages)
        print(
            f"{name} ({len(messages)} messages): hl7gw {warm:,.0f} msg/s warm, {cold:,.0f} msg/s cold, "
            f"{made:.1f} resources/message"
        )
        if python is None:
            continue
        peer = run_peer(python, paths, args.seconds)
        ok = [p for p in paths if peer["messages"][str(p)]["ok"]]
        if not ok:
            print("  peer hl7v2-fhir-bridge: converts none of these messages")
            continue
        peer_made = sum(peer["messages"][str(p)]["resources"] for p in ok) / len(ok)
        ours_made = sum(resources_made(run, p.read_bytes()) for p in ok) / len(ok)
        line = (
            f"  peer hl7v2-fhir-bridge: converts {len(ok)} of {len(paths)}, {peer['rate']:,.0f} msg/s on those, "
            f"{peer_made:.1f} resources/message there (hl7gw: {ours_made:.1f})"
        )
        if len(ok) == len(paths):  # the same messages: the throughputs compare
            line += f"; hl7gw warm is {warm / peer['rate']:.1f}x the peer, cold {cold / peer['rate']:.1f}x"
        print(line)


if __name__ == "__main__":
    main()
