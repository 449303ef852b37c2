"""What recording metrics costs per message, without the rest of the gateway.

    python benchmarks/metrics_record.py [--messages 200000]

Runs, for each message, the calls the listener (received, ACK sent) and a worker (four stage
histograms, converted, ACK-to-stored) make, in prometheus_client's multiprocess mode as under
``hl7gw run`` (values in memory-mapped files), then the same with metrics off (the no-op
recorder), and prints microseconds per message of each. Divide by a message's CPU in
benchmarks/e2e.py (worker ms/message) for the share metrics take. Then the time of one /metrics
rendering of those files (without the scrape-time reads of Redis and the database).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def per_message_us(recorder: object, messages: int) -> float:
    from gateway.metrics import NullRecorder

    assert isinstance(recorder, NullRecorder)
    senders = [f"APP{n}|FAC" for n in range(20)]
    types = ["ADT^A01", "ORU^R01", "ADT^A08", "SIU^S12"]
    started = time.perf_counter()
    for n in range(messages):
        sender, message_type = senders[n % 20], types[n % 4]
        recorder.received(sender, message_type)
        recorder.ack_sent("CA")
        recorder.stage("parse", 0.0004)
        recorder.stage("convert", 0.003)
        recorder.converted(message_type)
        recorder.stage("validate", 0.002)
        recorder.stage("store", 0.02)
        recorder.ack_to_stored(0.05)
    return (time.perf_counter() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # before prometheus_client is imported
        from gateway.metrics import NullRecorder, Recorder

        on = Recorder(lambda code, trigger: True)
        off = NullRecorder()
        per_message_us(on, 1000)  # make the labelled children and their files
        results = {"on": [], "off": []}  # type: dict[str, list[float]]
        for _ in range(3):
            results["on"].append(per_message_us(on, args.messages))
            results["off"].append(per_message_us(off, args.messages))
        from gateway.metrics.exposition import registry, render

        found = registry()
        started = time.perf_counter()
        for _ in range(20):
            body, _ = render(found)
        render_ms = (time.perf_counter() - started) / 20 * 1000
    best_on, best_off = min(results["on"]), min(results["off"])
    print(f"metrics on (multiprocess files): {best_on:.2f} us/message (best of 3: {results['on']})")
    print(f"metrics off (no-op recorder):    {best_off:.2f} us/message")
    print(f"cost of recording: {best_on - best_off:.2f} us/message")
    print(f"rendering /metrics from one process's files: {render_ms:.1f} ms ({len(body)} bytes)")


if __name__ == "__main__":
    main()
