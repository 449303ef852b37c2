"""Issue 17's acceptance end to end: a batch of N messages whose BTS-1 is wrong, sent to a running
``hl7gw run`` as one ``POST /hl7/batch``, answered with a batch ACK, every message converted and
searchable, the mismatch in the import's job record.

    python benchmarks/batch_acceptance.py [--messages 100000] [--import-rate 1000] [--sample 1000]

Generates the file as benchmarks/batch.py does (copies of the samples/ that convert into a Patient,
each with its own MSH-10 and PID-3, one FHS/BHS) with BTS-1 = N + 7; starts ``hl7gw run`` in a
temporary directory (embedded Redis, SQLite) with HL7GW_IMPORT_RATE; uploads the file; checks the
batch ACK (read back with gateway/hl7/batch.py: a BHS answering the file's BHS-11, no message
listed since every one was accepted, BTS-1 0) and the job record (``hl7gw jobs show --json``: the
batch flagged, its declared and read counts); then waits until the queues are empty and the
Patients stored reach N (``Patient?_summary=count``; some samples make two) and looks up a random
sample of the messages' PID-3 identifiers. Prints the upload time, the drain time and rate, and what was checked.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from batch import write_file  # noqa: E402
from e2e import templates  # noqa: E402

from gateway.hl7.batch import BatchEnd, BatchStart, FileEnd, ReadMessage, read_batch  # noqa: E402
from gateway.services.embedded_redis import free_port  # noqa: E402

OPERATOR, READER = "ops-token", "read-token"


def start(data: Path, rate: float) -> tuple[subprocess.Popen[bytes], int]:
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"}
    env.update(
        HL7GW_DATA_DIR=str(data),
        HL7GW_MLLP_PORT=str(free_port()),
        HL7GW_HTTP_PORT=str(http_port),
        HL7GW_LOG_LEVEL="WARNING",
        HL7GW_API_TOKENS=f"ops:{OPERATOR}:operator,read:{READER}:reader",
        HL7GW_IMPORT_RATE=str(rate),
    )
    log = data.parent / "gateway.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run"], env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while b"hl7gw: ready" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.2)
    return process, http_port


def wrong_count(path: Path, count: int) -> int:
    """Rewrite the file's BTS-1 as ``count + 7``; the number it now declares."""
    body = path.read_bytes()
    trailer = f"BTS|{count}\rFTS|1\r".encode()
    assert body.endswith(trailer)
    path.write_bytes(body[: -len(trailer)] + f"BTS|{count + 7}\rFTS|1\r".encode())
    return count + 7


def queued(env: dict[str, str]) -> int:
    """Messages still on the gateway's queues (``hl7gw status --json``)."""
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--json"], env=env, capture_output=True)
    queues = json.loads(shown.stdout).get("queues") or []
    return sum(queue["depth"] + queue["delayed"] for queue in queues)


def check_ack(ack: bytes) -> str:
    items = list(read_batch(io.BytesIO(ack)))
    starts = [item for item in items if isinstance(item, BatchStart)]
    ends = [item for item in items if isinstance(item, BatchEnd)]
    listed = [item for item in items if isinstance(item, ReadMessage)]
    assert len(starts) == 1 and starts[0].header is not None, items
    assert starts[0].header.reference == "B1", starts[0].header
    assert ends[0].declared == 0 and not listed, (ends, len(listed))
    assert isinstance(items[-1], FileEnd)
    return f"batch ACK: BHS-12 {starts[0].header.reference} (the file's BHS-11), BTS-1 0, no message listed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--import-rate", type=float, default=1000.0, help="HL7GW_IMPORT_RATE")
    parser.add_argument("--sample", type=int, default=1000, help="identifiers looked up at the end")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "batch.hl7"
        size = write_file(file, args.messages)
        declared = wrong_count(file, args.messages)
        found = templates()
        identifiers = [found[n % len(found)].render(f"B{n}")[2] for n in range(args.messages)]
        print(f"file: {args.messages:,} messages, {size / 1e6:.0f} MB, BTS-1 says {declared:,}")
        gateway, port = start(Path(tmp) / "data", args.import_rate)
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
            started = time.monotonic()
            with file.open("rb") as body:
                answer = api.post(
                    "/hl7/batch",
                    content=body,
                    headers={"Authorization": f"Bearer {OPERATOR}", "Content-Type": "application/hl7-v2"},
                )
            uploaded = time.monotonic() - started
            assert answer.status_code == 200, (answer.status_code, answer.text[:500])
            print(f"upload answered in {uploaded:.1f} s ({args.messages / uploaded:,.0f} msg/s)")
            print(check_ack(answer.content))
            job = answer.headers["X-Import-Job"]
            env = {**os.environ, "HL7GW_DATA_DIR": str(Path(tmp) / "data")}
            shown = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "jobs", "show", job, "--json"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            (record,) = json.loads(shown.stdout)["jobs"]
            summary = json.loads(record["summary"])
            (batch,) = summary["mismatched_batches"]
            assert summary["mismatch"] and (batch["declared"], batch["read"]) == (declared, args.messages), summary
            print(f"job {job}: batch {batch['control_id']} flagged, BTS-1 {declared:,} against {batch['read']:,} read")
            reader = {"Authorization": f"Bearer {READER}"}
            stored, last_change, last = 0, time.monotonic(), 0
            while stored < args.messages or queued(env):
                total = api.get("/fhir/Patient", params={"_summary": "count"}, headers=reader).json()["total"]
                if total != last:
                    last, last_change = total, time.monotonic()
                if time.monotonic() - last_change > 120:
                    raise SystemExit(f"stalled at {total:,} Patients")
                stored = total
                time.sleep(2)
            drained = time.monotonic() - started - uploaded
            print(f"{stored:,} Patients stored {drained:.0f} s after the ACK ({args.messages / drained:,.0f} msg/s)")
            missing = [
                identifier
                for identifier in random.Random(7).sample(identifiers, min(args.sample, len(identifiers)))
                if not api.get("/fhir/Patient", params={"identifier": identifier}, headers=reader).json().get("total")
            ]
            assert not missing, missing[:10]
            print(f"{min(args.sample, len(identifiers)):,} sampled identifiers: every one found")
        finally:
            gateway.terminate()
            gateway.wait(60)
            kept = Path(tempfile.gettempdir()) / "batch_acceptance_gateway.log"
            shutil.copyfile(Path(tmp) / "gateway.log", kept)
            print(f"the gateway's log: {kept}")


if __name__ == "__main__":
    main()
