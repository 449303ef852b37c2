"""Chaos runs, longer than the test suite's: faults in turn under load, then the count.

    python benchmarks/chaos.py [--database sqlite|postgresql] [--rounds 3] [--outage-seconds 60]
                               [--rate 40] [--connections 4] [--faults worker,listener,...]

Starts ``hl7gw run`` in a temporary directory (embedded Redis; SQLite, or a private PostgreSQL
server from Debian's binaries that the run can stop), streams distinct ADT^A04 messages, and
applies each fault in turn, ``--rounds`` times:

  worker      kill -9 a worker while it holds messages (all paused while a backlog builds, then
              that one let go for a moment to fetch its fill)
  listener    kill -9 the MLLP listener
  redis       kill -9 the embedded redis-server (hl7gw run restarts it from its AOF)
  redis-down  Redis gone (connections refused) for --outage-seconds: killed while hl7gw run is
              stopped, restarted when it goes on
  redis-hang  SIGSTOP the redis-server for --outage-seconds
  database    the database down for --outage-seconds (PostgreSQL stopped; SQLite write-locked)
  tree        kill -9 the supervisor and every process below it, then hl7gw run again

Prints, per fault, the messages in flight when it struck, the longest time without an ACK and the
time from its end until everything acknowledged before was processed; then what became of every
acknowledged message (tests/support/chaos.py). Exits 1 if any was lost, applied twice, or left in .XQ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.chaos import Chaos, PrivatePostgres  # noqa: E402

FAULTS = ("worker", "listener", "redis", "redis-down", "redis-hang", "database", "tree")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=1, help="how many times to go through the faults")
    parser.add_argument("--outage-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=40.0, help="messages per second offered")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")

    postgres = None
    if args.database == "postgresql":
        if not PrivatePostgres.available():
            parser.error("needs PostgreSQL's server binaries (initdb, pg_ctl)")
        postgres = PrivatePostgres().init()
    with tempfile.TemporaryDirectory(prefix="hl7gw-chaos-") as tmp:
        chaos = Chaos(Path(tmp), postgres=postgres, rate=args.rate, connections=args.connections)
        try:
            chaos.start()
            outage = args.outage_seconds
            steps = {
                "worker": ("kill -9 a worker holding messages", chaos.kill_worker, chaos.fill_one_worker),
                "listener": ("kill -9 the MLLP listener", chaos.kill_listener, None),
                "redis": ("kill -9 the embedded Redis", chaos.kill_redis, None),
                "redis-down": (f"Redis down {outage:.0f} s", lambda: chaos.redis_down(outage), None),
                "redis-hang": (f"Redis hung (SIGSTOP) {outage:.0f} s", lambda: chaos.stop_redis(outage), None),
                "database": (f"database down {outage:.0f} s", lambda: chaos.database_down(outage), None),
                "tree": ("kill -9 the whole tree", chaos.kill_tree, None),
            }
            for round_number in range(1, args.rounds + 1):
                print(f"round {round_number} of {args.rounds}", flush=True)
                for name in faults:
                    title, apply, prepare = steps[name]
                    chaos.fault(title, apply, prepare)
            report = chaos.finish()
        finally:
            chaos.close()
            if postgres is not None:
                postgres.remove()
    print("\n".join(report.lines()))
    broken = report.lost or report.applied_twice or report.duplicate_envelopes or report.in_xq or report.parked
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
