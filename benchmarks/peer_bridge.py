"""Runs inside the peer's own virtual environment (created by benchmarks/convert.py): the same
messages through hl7v2-fhir-bridge (PyPI, MIT), parse + map + validate + serialize, as that
package's own pipeline does it. Prints one JSON object: per message whether the peer converts it
and how many resources it makes, and the peer's messages per second over those it converts.

    <peer venv>/bin/python benchmarks/peer_bridge.py --seconds 3 FILE...
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from v2fhir.config import default_config_path, load_config
from v2fhir.convert import convert
from v2fhir.hl7.parser import parse_bytes
from v2fhir.validate import validate_bundle

NOW = datetime(2024, 1, 1, tzinfo=UTC)  # the peer stamps bundles with a time; keep it fixed


def pipeline(config, raw: bytes) -> dict:  # type: ignore[no-untyped-def]
    bundle = convert(parse_bytes(raw), config, now=NOW).bundle
    validate_bundle(bundle)
    json.dumps(bundle)
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    config = load_config(default_config_path())
    results: dict[str, dict] = {}
    converted: list[bytes] = []
    for name in args.files:
        raw = Path(name).read_bytes()
        try:
            bundle = pipeline(config, raw)
        except Exception as exc:  # noqa: BLE001 - an unsupported or rejected message
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        resources = sum(1 for e in bundle.get("entry", []) if "resource" in e)
        results[name] = {"ok": True, "resources": resources}
        converted.append(raw)
    rate = 0.0
    if converted:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            for raw in converted:
                pipeline(config, raw)
            done += len(converted)
        rate = done / (time.perf_counter() - start)
    print(json.dumps({"messages": results, "rate": rate}))


if __name__ == "__main__":
    main()
