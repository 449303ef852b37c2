"""The ``hl7gw`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.config import Settings, load_settings, unknown_variables
from gateway.errors import ConfigError
from gateway.filemodes import restrict_umask
from gateway.procutil import exit_with_supervisor, process_name, signal_ready, supervised

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from gateway.journal.dead_letters import DeadLetterStore
    from gateway.journal.filters import LetterFilter
    from gateway.services.batch_uploads import BatchUploads
    from gateway.services.operator_actions import OperatorDesk


def _require_redis(settings: Settings, role: str) -> str:
    if not settings.storage.redis_url:
        raise ConfigError(
            f"hl7gw {role} runs one part alone and needs HL7GW_REDIS_URL (and usually HL7GW_DATABASE_URL); "
            "use 'hl7gw run' for the all-in-one embedded setup"
        )
    return settings.storage.redis_url


def _start_metrics(settings: Settings, *, serve: bool) -> None:
    """This process's metrics recorder (a no-op with HL7GW_METRICS=off); a process run alone
    (``serve``, not under ``hl7gw run``) serves its metrics on HL7GW_METRICS_PORT when set."""
    from gateway import metrics

    metrics.configure(settings.prometheus.enabled)
    port = settings.prometheus.port
    if serve and port is not None and settings.prometheus.enabled and not supervised():
        from gateway.metrics.exposition import serve as serve_metrics

        serve_metrics(port, settings.api.host)


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.services.supervisor import run

    run(settings)
    return 0


def _refuse_volatile_redis(settings: Settings, redis_url: str) -> None:
    """A process run alone that acknowledges messages does not start on a Redis that can lose them
    (unless allowed). Under ``hl7gw run`` the supervisor checked already, and a Redis that changes
    later is refused by the intake, without a restart loop."""
    if not supervised():
        from gateway.queue.durability import require_durable

        require_durable(redis_url, settings.storage.allow_volatile_redis)


def cmd_mllp(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.services import listener as service

    redis_url = _require_redis(settings, "mllp")
    _refuse_volatile_redis(settings, redis_url)
    _start_metrics(settings, serve=True)
    service.run(settings, redis_url, service.configured_rules(settings))
    return 0


def cmd_inbox(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.services import inbox

    redis_url = _require_redis(settings, "inbox")
    _refuse_volatile_redis(settings, redis_url)
    _start_metrics(settings, serve=True)
    inbox.run(settings, redis_url)
    return 0


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.services.worker import run_worker

    redis_url = _require_redis(settings, "worker")
    if not supervised():  # a worker drains the queue into the database even so: that only helps
        from gateway.queue.durability import judge_at_start

        verdict = judge_at_start(redis_url, settings.storage.allow_volatile_redis)
        if verdict is not None and verdict.refusal:
            logging.getLogger("gateway.worker").error("the listener refuses messages: %s", verdict.refusal)
    _start_metrics(settings, serve=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(settings, redis_url, stop, ready=signal_ready)
    return 0


def _operator_desk(settings: Settings) -> OperatorDesk:
    """The operator actions /admin offers: on this process's database, replaying onto its Redis
    (HL7GW_REDIS_URL, which ``hl7gw run`` gives its API) with the intake rules of its mappings."""
    from gateway.db.engine import make_engine
    from gateway.mllp.triage import Triage
    from gateway.queue.broker import make_broker
    from gateway.services.listener import configured_rules
    from gateway.services.operator_actions import OperatorDesk
    from gateway.services.replay import enqueue_on

    url = settings.storage.redis_url
    enqueue = enqueue_on(make_broker(url, namespace=settings.storage.redis_namespace)) if url else None
    return OperatorDesk(make_engine(settings.storage.database_url), enqueue, Triage(configured_rules(settings)))


def _batch_uploads(settings: Settings) -> BatchUploads | None:
    """What POST /hl7/batch imports with: onto this process's Redis (HL7GW_REDIS_URL, which
    ``hl7gw run`` gives its API), job records in its database; None without a Redis."""
    from gateway.db.engine import make_engine
    from gateway.journal.jobs import JobStore
    from gateway.services.batch_uploads import BatchUploads

    url = settings.storage.redis_url
    return BatchUploads(settings, url, JobStore(make_engine(settings.storage.database_url))) if url else None


def cmd_api(settings: Settings, _args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.services.dead_letter_views import CurrentMappings
    from gateway.services.outages import until_available

    _start_metrics(settings, serve=False)  # the API serves /metrics itself
    mappings = CurrentMappings(settings.conversion)
    dry_run = mappings.dry_run  # for /admin/dead-letters/{id} and the console's letters and test page
    threading.Thread(target=mappings.warm, name="warm-mappings", daemon=True).start()
    desk = _operator_desk(settings)
    uploads = _batch_uploads(settings)
    # log_config=None: uvicorn's records go through our handler (gateway/logs.py) like all others;
    # no access log, since a query string can carry a name or a birth date.
    app = until_available(
        "database",
        lambda: create_app(
            settings, dry_run=dry_run, desk=desk, batch_uploads=uploads, test_message=mappings.workbench
        ),
        max_backoff_s=settings.worker.outage_max_backoff_s,
    )
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            logging.getLogger("gateway.api").info(
                "FHIR API listening on http://%s:%d/fhir", settings.api.host, settings.api.port
            )
            signal_ready()
        await task

    asyncio.run(serve())
    return 0


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Engine]:
    """The configured database (its tables created if missing), disposed of afterwards."""
    from gateway.db.engine import make_engine
    from gateway.db.migrate import migrate

    engine = make_engine(settings.storage.database_url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def _dead_letter_store(settings: Settings) -> Iterator[DeadLetterStore]:
    from gateway.journal.dead_letters import DeadLetterStore

    with _database(settings) as engine:
        yield DeadLetterStore(engine)


def _letter_filter(args: argparse.Namespace) -> LetterFilter | None:
    """The filter of ``dlq list``'s options; None (after saying why) when one cannot be read."""
    from gateway.journal.filters import LETTER_STATUSES, FilterError, LetterFilter, parse_since

    status = None if args.all else args.status
    if status is not None and status not in LETTER_STATUSES:
        print(f"hl7gw dlq list: --status is one of {', '.join(sorted(LETTER_STATUSES))}", file=sys.stderr)
        return None
    try:
        since = parse_since(args.since) if args.since else None
    except FilterError as exc:
        print(f"hl7gw dlq list: {exc}", file=sys.stderr)
        return None
    return LetterFilter(status=status, stage=args.stage, sender=args.sender, since=since)


def cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 with the letters (none is not an error), 2 when a filter cannot be read."""
    from gateway.services.dead_letter_views import print_list

    where = _letter_filter(args)
    if where is None:
        return 2
    with _dead_letter_store(settings) as store:
        letters = store.list(where=where, limit=args.limit)
    print_list(letters, sys.stdout, args.json)
    return 0


def cmd_dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the letter is found, 1 when no letter has that id."""
    from gateway.journal.dead_letters import edited_copy
    from gateway.services.dead_letter_views import CurrentMappings, detail, print_detail

    with _dead_letter_store(settings) as store:
        letter = store.get(args.id)
        edited = edited_copy(store.archive, letter) if letter is not None else None
    if letter is None:
        if args.json:
            print(json.dumps({"error": f"no dead letter {args.id}"}))
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    dry = None if args.no_dry_run else CurrentMappings(settings.conversion).dry_run
    print_detail(detail(letter, dry, edited), sys.stdout, args.json)
    return 0


def _when(text: str | None) -> int | None:
    """--since/--until: an ISO date-time (UTC unless it has an offset) or an age (2h, 7d), as ms."""
    from gateway.journal.filters import FilterError, parse_since

    if not text:
        return None
    try:
        return parse_since(text)
    except FilterError as exc:
        raise ConfigError(str(exc)) from None


def _start_job(settings: Settings, kind: str, filter: dict[str, object]) -> int:
    from gateway.services.operator_actions import ActionRefused, start_job
    from gateway.store.audit import cli_operator

    with _database(settings) as engine:
        try:
            job = start_job(engine, kind, filter, cli_operator())  # type: ignore[arg-type]
        except ActionRefused as exc:
            print(exc, file=sys.stderr)
            return 2
    print(f"job {job.id} started: a running worker works on it at HL7GW_REPLAY_RATE messages/s")
    print(f"follow it with: hl7gw jobs show {job.id}")
    return 0


def cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Put a dead letter's message (or a corrected copy, ``--raw FILE``) back on the queue; with
    ``--all``, start a job replaying every open letter the filters match."""
    if args.all:
        if args.id or args.raw:
            print("--all replays the letters the filters match: no id, no --raw", file=sys.stderr)
            return 2
        wanted = {"stage": args.stage, "sender": args.sender, "error_type": args.error_type, "reason": args.reason}
        wanted.update(since=_when(args.since), until=_when(args.until))
        return _start_job(settings, "replay", wanted)
    if not args.id:
        print("name a dead letter, or --all with filters", file=sys.stderr)
        return 2

    from gateway.mllp.triage import Triage
    from gateway.services.embedded_redis import EmbeddedRedis
    from gateway.services.listener import configured_rules
    from gateway.services.replay import Replayer, ReplayRefused, queue_at
    from gateway.store.audit import cli_operator

    redis_url = settings.storage.redis_url or EmbeddedRedis.running_url(settings.storage.data_dir / "redis")
    if redis_url is None:
        raise ConfigError(
            "no queue to replay onto: start the gateway ('hl7gw run'), or set HL7GW_REDIS_URL to its Redis"
        )
    edited = Path(args.raw).read_bytes() if args.raw else None
    with _dead_letter_store(settings) as store, queue_at(redis_url, settings.storage.redis_namespace) as enqueue:
        replayer = Replayer(store, enqueue, Triage(configured_rules(settings)))
        try:
            done = replayer.replay(args.id, cli_operator(), edited)
        except ReplayRefused as exc:
            print(exc, file=sys.stderr)
            return 1
    print(f"dead letter {done.letter.id} replayed as message {done.envelope.id}")
    print(f"follow it with: hl7gw message {done.envelope.id}")
    return 0


def cmd_dlq_discard(settings: Settings, args: argparse.Namespace) -> int:
    """Mark an open dead letter discarded, with who and why (nothing is deleted)."""
    from gateway.services.operator_actions import ActionRefused, discard
    from gateway.store.audit import cli_operator

    with _database(settings) as engine:
        try:
            discard(engine, args.id, cli_operator(), args.reason)
        except ActionRefused as exc:
            print(exc, file=sys.stderr)
            return 1
    print(f"dead letter {args.id} discarded")
    return 0


def cmd_dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Remove the raw messages of handled (replayed or discarded) letters older than N days."""
    from gateway.services.operator_actions import ActionRefused, purge
    from gateway.store.audit import cli_operator

    with _database(settings) as engine:
        try:
            count = purge(engine, args.older_than, cli_operator())
        except ActionRefused as exc:
            print(exc, file=sys.stderr)
            return 2
    print(f"removed the raw message of {count} handled dead letter(s) older than {args.older_than} days")
    return 0


def cmd_reprocess(settings: Settings, args: argparse.Namespace) -> int:
    """Start a job running the archived messages the filters match through the current mappings."""
    wanted = {"sender": args.sender, "message_type": args.type, "status": args.status}
    wanted.update(since=_when(args.since), until=_when(args.until))
    return _start_job(settings, "reprocess", wanted)


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.journal.jobs import JobStore

    with _database(settings) as engine:
        store = JobStore(engine)
        if args.action in ("pause", "resume", "cancel"):
            from gateway.services.operator_actions import ActionRefused, control_job
            from gateway.store.audit import cli_operator

            try:
                control_job(engine, args.id or "", args.action, cli_operator())
            except ActionRefused as exc:
                print(exc, file=sys.stderr)
                return 1
            print(f"job {args.id}: {args.action}d")
            return 0
        jobs = [store.get(args.id)] if args.action == "show" and args.id else store.list()
        if args.follow and args.action == "show" and jobs and jobs[0] is not None:
            return _follow(store, jobs[0])
    if args.json:
        print(json.dumps({"jobs": [job.as_data() for job in jobs if job is not None]}, indent=2))
        return 0 if jobs and jobs[0] is not None else 1
    if not jobs or jobs[0] is None:
        print("no such job" if args.action == "show" else "no jobs", file=sys.stderr if args.id else sys.stdout)
        return 1 if args.action == "show" else 0
    for job in jobs:
        assert job is not None
        when = datetime.fromtimestamp(job.created_at / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        counts = f"queued {job.done}, skipped {job.skipped}"
        print(f"{job.id}  {job.kind:9}  {job.status:9}  {when}  by {job.created_by}  {counts}")
        if args.action == "show":
            print(f"  filter: {job.filter}\n  cursor: {job.cursor or '(start)'}\n  summary: {job.summary or '-'}")
    return 0


def _follow(store: Any, job: Any) -> int:
    """Print a job's progress on one line until it ends (or Ctrl-C): queued, skipped, rate."""
    import time

    started, first = time.monotonic(), job.done
    try:
        while True:
            rate = (job.done - first) / max(time.monotonic() - started, 1e-9)
            line = f"job {job.id[:8]} {job.status:9} queued {job.done:7d}  skipped {job.skipped:5d}  {rate:6.0f}/s"
            print("\r" + line, end="", flush=True)
            if job.status in ("done", "cancelled", "failed"):
                print(f"\n{job.summary or ''}")
                return 0
            time.sleep(1.0)
            job = store.get(job.id) or job
    except KeyboardInterrupt:
        print()
        return 0


def cmd_message(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services.operator_views import show_message

    with _database(settings) as engine:
        return show_message(engine, args.key, sys.stdout, raw=args.raw)


def cmd_trail(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services.operator_views import show_trail

    with _database(settings) as engine:
        return show_trail(engine, args.reference, sys.stdout)


def cmd_superseded(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services.operator_views import list_superseded

    with _database(settings) as engine:
        return list_superseded(engine, args.limit, sys.stdout)


def cmd_sinks(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.services.operator_views import sink_status

    with _database(settings) as engine:
        return sink_status(engine, sys.stdout)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """The readiness checks, queues, workers, senders and open dead letters; exit 0 ready, 1 not."""
    from gateway.services.embedded_redis import EmbeddedRedis
    from gateway.services.status import gather, print_status

    redis_url, found_as = settings.storage.redis_url, " (HL7GW_REDIS_URL)"
    if redis_url is None:
        # The embedded Redis of an 'hl7gw run' on this data dir: its pid and port are in data/redis.
        redis_url, found_as = EmbeddedRedis.running_url(settings.storage.data_dir / "redis"), " (embedded)"
    status = gather(settings, redis_url, found_as)
    if redis_url is None:
        status.problems.append(f"no 'hl7gw run' runs on data dir {settings.storage.data_dir.resolve()}")
    print_status(status, sys.stdout, args.json)
    return 0 if status.readiness.ready else 1


def _share_metrics_with_run(settings: Settings) -> None:
    """Beside an ``hl7gw run`` on this data dir, count into its metric files, so that its /metrics
    shows the import's counters (set before prometheus_client is first imported, as its children
    get it; gateway/metrics/exposition.py)."""
    from gateway.metrics.exposition import MULTIPROC_DIR

    shared = settings.storage.data_dir / "metrics"
    if MULTIPROC_DIR not in os.environ and "prometheus_client" not in sys.modules and shared.is_dir():
        from gateway.services.embedded_redis import EmbeddedRedis

        if EmbeddedRedis.running_url(settings.storage.data_dir / "redis") is not None:
            os.environ[MULTIPROC_DIR] = str(shared)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """Import batch files (or a directory of them, or stdin) through the intake MLLP uses."""
    from gateway.journal.jobs import JobStore
    from gateway.services.embedded_redis import EmbeddedRedis
    from gateway.services.import_console import UNFINISHED, run_import

    embedded = EmbeddedRedis.running_url(settings.storage.data_dir / "redis")
    redis_url = settings.storage.redis_url or embedded
    if embedded is not None:  # an hl7gw run on this machine: its listener and workers get the CPU first
        from gateway.procutil import yield_cpu

        yield_cpu()
    _share_metrics_with_run(settings)
    _start_metrics(settings, serve=False)
    if redis_url is None:
        print(
            f"hl7gw import: no Redis: start 'hl7gw run' on data dir {settings.storage.data_dir.resolve()} "
            "or set HL7GW_REDIS_URL",
            file=sys.stderr,
        )
        return UNFINISHED
    with _database(settings) as engine:
        return run_import(settings, redis_url, args.paths, jobs=JobStore(engine), again=args.again, as_json=args.json)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    """Bring the database to this release's schema (hl7gw run and every part do it at start too)."""
    from gateway.db.engine import make_engine
    from gateway.db.migrate import current, head, migrate

    engine = make_engine(settings.storage.database_url)
    try:
        with engine.connect() as conn:
            before = current(conn)
        after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"database schema at revision {after} (the newest)")
    else:
        print(f"database schema upgraded from revision {before or 'none'} to {after} (the newest is {head()})")
    return 0


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild the search index of the stored resources (after an upgrade that indexes more, docs/fhir-api.md)."""
    from gateway.store.resources import ResourceStore

    with _database(settings) as engine:
        done = ResourceStore(engine).reindex(args.type)
    print(f"reindexed {done} resources" + (f" of type {args.type}" if args.type else ""))
    return 0


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    """Send every message in the files; exit 1 if any got AE/AR/CE/CR, a NAK, or no ACK in time."""
    from gateway.mllp.client import send_messages, split_messages
    from gateway.mllp.tls import client_context

    messages: list[tuple[str, bytes]] = []
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {name}: {exc.strerror}") from None
        messages += [(f"{name}#{n}", m) for n, m in enumerate(split_messages(data), start=1)]
    if not messages:
        print("hl7gw send: no HL7 messages in the given files", file=sys.stderr)
        return 1
    tls = None
    if args.tls or args.ca or args.cert:
        tls = client_context(args.ca, args.cert, args.key, verify=not args.insecure)
    host = args.host or settings.mllp.host
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    port = args.port or settings.mllp.port
    results = asyncio.run(send_messages([m for _, m in messages], host, port, ssl_context=tls, timeout=args.timeout))
    for (where, _), result in zip(messages, results):
        outcome = result.problem or result.code or ("no ACK wanted (MSH-15 NE)" if result.unanswered else "?")
        print(f"{where} MSH-10 {result.control_id or '(none)'}: {outcome}")
        if result.ack is not None:
            text = result.ack.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
            print("".join(f"  {segment}\n" for segment in text.split("\r") if segment), end="")
    failed = sum(1 for r in results if not r.ok)
    print(f"{len(results) - failed} accepted, {failed} not accepted")
    return 1 if failed else 0


def cmd_convert(settings: Settings, args: argparse.Namespace) -> int:
    """Print the FHIR Bundle of each message in the files; --report lists what the maps left unused."""
    from gateway.convert.runtime.engine import Converter
    from gateway.services.offline import convert_files

    converter = Converter.configured(settings.conversion)  # the site's overlay and time zones too
    return convert_files(args.files, args.report, sys.stdout, sys.stderr, converter)


def cmd_mapping_schema(settings: Settings, args: argparse.Namespace) -> int:
    """Print the JSON Schema of mapping files (for editors; see docs/mappings.md)."""
    from gateway.convert.loading.schema import mapping_schema

    print(json.dumps(mapping_schema(), indent=2))
    return 0


def cmd_mapping_coverage(settings: Settings, args: argparse.Namespace) -> int:
    """Print how much of the IG's segment maps the mappings follow (the table in docs/mappings.md)."""
    from gateway.convert.loading.coverage import coverage_table
    from gateway.convert.runtime.engine import Converter

    ig = args.ig or Path(__file__).resolve().parent.parent / "docs" / "ig-maps" / "segments"
    if not ig.is_dir():
        raise ConfigError(f"no IG segment maps at {ig} (a source checkout has them; or pass --ig DIR)")
    print(coverage_table(Converter.load().mappings, ig), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hl7gw", description="HL7 v2 (MLLP) to FHIR R4 gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run everything (embedded Redis unless HL7GW_REDIS_URL is set)").set_defaults(
        func=cmd_run
    )
    sub.add_parser("mllp", help="run only the MLLP listener (needs HL7GW_REDIS_URL)").set_defaults(func=cmd_mllp)
    sub.add_parser("worker", help="run only a worker (needs HL7GW_REDIS_URL)").set_defaults(func=cmd_worker)
    sub.add_parser("api", help="run only the FHIR REST API").set_defaults(func=cmd_api)
    sub.add_parser("inbox", help="run only the watched inbox, HL7GW_INBOX_DIR (needs HL7GW_REDIS_URL)").set_defaults(
        func=cmd_inbox
    )
    status = sub.add_parser("status", help="is the gateway ready; queues, workers, senders, dead letters")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.set_defaults(func=cmd_status)
    sub.add_parser("migrate", help="bring the database to this release's schema").set_defaults(func=cmd_migrate)
    reindex = sub.add_parser("reindex", help="rebuild the FHIR store's search index (once after an upgrade)")
    reindex.add_argument("--type", help="only resources of this type (e.g. Observation)")
    reindex.set_defaults(func=cmd_reindex)
    imports = sub.add_parser(
        "import",
        help="import HL7 batch files through the intake (resumable; exit 1 rejected/mismatch, 2 unfinished)",
    )
    imports.add_argument("paths", nargs="+", metavar="FILE|DIR|-", help="batch files, directories of them, - for stdin")
    imports.add_argument("--again", action="store_true", help="import a file already imported once more")
    imports.add_argument("--json", action="store_true", help="the summary and per-batch detail as one JSON document")
    imports.set_defaults(func=cmd_import)
    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq.add_parser("list", help="list dead letters, newest first")
    dlq_list.add_argument("--status", default="open", help="open (default), replayed or discarded")
    dlq_list.add_argument("--all", action="store_true", help="any status")
    dlq_list.add_argument("--stage", help="where they failed: parse, convert, validate, deliver (every sink), ...")
    dlq_list.add_argument("--sender", help="MSH-3|MSH-4 as the gateway names senders, e.g. 'LAB|MAIN'")
    dlq_list.add_argument("--since", help="ISO 8601 date-time (UTC unless it has an offset), or an age: 30m, 2h, 7d")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    dlq_list.set_defaults(func=cmd_dlq_list)
    dlq_show = dlq.add_parser(
        "show", help="one dead letter: why, a dry run with today's mappings, the message by segment and field"
    )
    dlq_show.add_argument("id")
    dlq_show.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    dlq_show.add_argument("--no-dry-run", action="store_true", help="do not convert the message again")
    dlq_show.set_defaults(func=cmd_dlq_show)
    dlq_replay = dlq.add_parser(
        "replay", help="put a dead letter's message back on the queue (the gateway must be running)"
    )
    dlq_replay.add_argument("id", nargs="?")
    dlq_replay.add_argument("--all", action="store_true", help="start a job replaying every open letter matched")
    for name in ("stage", "sender", "error-type", "reason", "since", "until"):
        dlq_replay.add_argument(f"--{name}", help="with --all: letters with this " + name.replace("-", " "))
    dlq_replay.add_argument(
        "--raw", metavar="FILE", help="replay this corrected message instead (the letter keeps its own)"
    )
    dlq_replay.set_defaults(func=cmd_dlq_replay)
    dlq_discard = dlq.add_parser(
        "discard", help="mark an open dead letter discarded, with the reason (kept, not deleted)"
    )
    dlq_discard.add_argument("id")
    dlq_discard.add_argument("--reason", required=True, help="why, for whoever reads the letter later")
    dlq_discard.set_defaults(func=cmd_dlq_discard)
    dlq_purge = dlq.add_parser(
        "purge", help="remove the raw message (PHI) of replayed and discarded letters older than N days"
    )
    dlq_purge.add_argument("--older-than", type=int, required=True, metavar="DAYS")
    dlq_purge.set_defaults(func=cmd_dlq_purge)
    reprocess = sub.add_parser(
        "reprocess", help="start a job running archived messages through the current mappings again"
    )
    reprocess.add_argument("--sender", help="APP|FACILITY (MSH-3|MSH-4)")
    reprocess.add_argument("--type", help="message type, or its start: ADT^A01, ORU")
    reprocess.add_argument("--status", default="processed", choices=("processed", "failed"))
    reprocess.add_argument("--since", help="received at or after (ISO date or date-time, UTC)")
    reprocess.add_argument("--until", help="received before (ISO date or date-time, UTC)")
    reprocess.set_defaults(func=cmd_reprocess)
    jobs = sub.add_parser("jobs", help="replay and reprocess jobs: list, show, pause, resume, cancel")
    jobs.add_argument("action", nargs="?", default="list", choices=("list", "show", "pause", "resume", "cancel"))
    jobs.add_argument("id", nargs="?")
    jobs.add_argument("--follow", action="store_true", help="with show: print its progress until it ends")
    jobs.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    jobs.set_defaults(func=cmd_jobs)
    message = sub.add_parser("message", help="one message's journey: status, resource versions, sink deliveries")
    message.add_argument("key", help="the message's archive id, or its MSH-10")
    message.add_argument("--raw", action="store_true", help="print the raw message too")
    message.set_defaults(func=cmd_message)
    trail = sub.add_parser("trail", help="the messages that wrote (or were superseded on) one resource")
    trail.add_argument("reference", help="Type/id, e.g. Patient/0c4a...")
    trail.set_defaults(func=cmd_trail)
    superseded = sub.add_parser("superseded", help="writes skipped because newer data was stored, newest first")
    superseded.add_argument("--limit", type=int, default=100)
    superseded.set_defaults(func=cmd_superseded)
    sub.add_parser("sinks", help="remote sinks: messages by delivery state, oldest pending").set_defaults(
        func=cmd_sinks
    )
    send = sub.add_parser("send", help="send the HL7 messages in files over MLLP and print each ACK")
    send.add_argument("files", nargs="+", metavar="FILE", help="one or many messages per file (CR, LF or CRLF)")
    send.add_argument("--host", help="default: HL7GW_MLLP_HOST")
    send.add_argument("--port", type=int, help="default: HL7GW_MLLP_PORT")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK")
    send.add_argument("--tls", action="store_true", help="connect with TLS (implied by --ca/--cert)")
    send.add_argument("--ca", type=Path, help="CA certificate(s) to verify the listener (default: system store)")
    send.add_argument("--cert", type=Path, help="client certificate for mutual TLS (PEM)")
    send.add_argument("--key", type=Path, help="key of the client certificate, if not in --cert")
    send.add_argument("--insecure", action="store_true", help="do not verify the listener's certificate")
    send.set_defaults(func=cmd_send)
    convert = sub.add_parser("convert", help="print the FHIR Bundle of each HL7 message in the files (offline)")
    convert.add_argument("files", nargs="+", metavar="FILE", help="one or many messages per file (CR, LF or CRLF)")
    convert.add_argument(
        "--report", action="store_true", help="list segments and fields present but not used, and notes"
    )
    convert.set_defaults(func=cmd_convert)
    sub.add_parser("mapping-schema", help="print the JSON Schema of mapping files, for editors").set_defaults(
        func=cmd_mapping_schema
    )
    coverage = sub.add_parser("mapping-coverage", help="print how much of the v2-to-FHIR IG's segment maps is followed")
    coverage.add_argument("--ig", type=Path, help="folder of the IG's segment CSVs (default: docs/ig-maps/segments)")
    coverage.set_defaults(func=cmd_mapping_coverage)
    return parser


def main(argv: list[str] | None = None) -> int:
    restrict_umask()  # before anything creates a file: patient data is never world-readable
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.setup(settings.logging.level, settings.logging.format, process_name(args.command))
        exit_with_supervisor()  # a child of hl7gw run does not outlive it
        if not supervised():  # the supervisor warned already; its children would repeat it
            for name, suggestion in unknown_variables(os.environ):
                hint = f" (did you mean {suggestion}?)" if suggestion else ""
                logging.getLogger("gateway.config").warning("%s is not an hl7gw setting%s; it is ignored", name, hint)
        return int(args.func(settings, args) or 0)
    except ConfigError as exc:
        print(f"hl7gw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``hl7gw message X | head``): not an error. Point stdout at
        # /dev/null so that flushing it at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
