"""The ``hl7gw`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError


def _setup_logging() -> None:
    level = os.environ.get("HL7GW_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s",
    )


def _require_redis(settings: Settings, role: str) -> str:
    if not settings.redis_url:
        raise ConfigError(
            f"hl7gw {role} runs one part alone and needs HL7GW_REDIS_URL (and usually HL7GW_DATABASE_URL); "
            "use 'hl7gw run' for the all-in-one embedded setup"
        )
    return settings.redis_url


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.runner import run

    run(settings)
    return 0


def cmd_mllp(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.mllp.server import MllpServer
    from gateway.queue.intake import Intake

    redis_url = _require_redis(settings, "mllp")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        intake = Intake(
            redis_url,
            namespace=settings.redis_namespace,
            batch_max=settings.commit_batch_max,
            timeout=settings.commit_timeout_s,
        )
        await intake.start()
        server = MllpServer(intake)
        await server.start(settings.mllp_host, settings.mllp_port)
        await stop.wait()
        logging.getLogger(__name__).info("MLLP listener stopping: no new connections, draining ACKs")
        await server.stop()
        await intake.close()

    asyncio.run(main())
    return 0


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.queue.worker import run_worker

    redis_url = _require_redis(settings, "worker")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(settings, redis_url, stop)
    return 0


def cmd_api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app

    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, log_level="warning")
    return 0


def cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.deadletter import DeadLetterStore
    from gateway.store.db import create_schema, make_engine

    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    letters = DeadLetterStore(engine).list(status=None if args.all else "open", limit=args.limit)
    if not letters:
        print("no dead letters")
        return 0
    print(f"{'id':36}  {'when (UTC)':19}  {'stage':9}  {'sender':24}  {'control id':20}  reason")
    for d in letters:
        when = datetime.fromtimestamp(d.created_at / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        reason = d.reason.replace("\n", " ")
        print(f"{d.id:36}  {when:19}  {d.stage:9}  {d.sender[:24]:24}  {d.control_id[:20]:20}  {reason[:120]}")
    return 0


def cmd_dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.deadletter import DeadLetterStore
    from gateway.store.db import create_schema, make_engine

    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    letter = DeadLetterStore(engine).get(args.id)
    if letter is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    print(f"id: {letter.id}\nstatus: {letter.status}\nstage: {letter.stage}\nerror: {letter.error_type}")
    print(f"sender: {letter.sender}\ncontrol id: {letter.control_id}\nattempts: {letter.attempts}")
    print(f"reason: {letter.reason}\n--- raw message ---")
    print(letter.raw.decode("utf-8", errors="replace").replace("\r", "\n"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hl7gw", description="HL7 v2 (MLLP) to FHIR R4 gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run everything (embedded Redis unless HL7GW_REDIS_URL is set)").set_defaults(func=cmd_run)
    sub.add_parser("mllp", help="run only the MLLP listener (needs HL7GW_REDIS_URL)").set_defaults(func=cmd_mllp)
    sub.add_parser("worker", help="run only a worker (needs HL7GW_REDIS_URL)").set_defaults(func=cmd_worker)
    sub.add_parser("api", help="run only the FHIR REST API").set_defaults(func=cmd_api)
    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq.add_parser("list", help="list dead letters, newest first")
    dlq_list.add_argument("--all", action="store_true", help="include replayed and discarded ones")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_show = dlq.add_parser("show", help="show one dead letter with its raw message")
    dlq_show.add_argument("id")
    dlq_show.set_defaults(func=cmd_dlq_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        settings = load_settings()
        return int(args.func(settings, args) or 0)
    except ConfigError as exc:
        print(f"hl7gw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
