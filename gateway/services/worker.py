"""The worker process: Dramatiq threads running the pipeline on queued envelopes, and delivering
stored messages to each remote FHIR sink from that sink's own queue."""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.engine import Engine

from gateway.config import ConversionSettings, Settings
from gateway.convert.runtime.engine import Converter
from gateway.db.engine import make_engine, write_probe
from gateway.db.migrate import migrate
from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.fanout import SinkFanout, SinkMessage, actor_name
from gateway.deliver.remote import RemoteSink
from gateway.deliver.sink_worker import SinkWorker
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.journal.dead_letters import DeadLetterStore, Letter
from gateway.journal.deliveries import DeliveryStates
from gateway.journal.messages import MessageArchive
from gateway.keys import ACTOR, IMPORT_ACTOR, IMPORT_QUEUE, QUEUE, REPLAY_ACTOR, REPLAY_QUEUE, Keys
from gateway.mllp.triage import Triage
from gateway.procutil import consumer_prefix
from gateway.queue.broker import GatewayBroker, QueueMaintenance, make_broker
from gateway.queue.pacing import ImportPace
from gateway.readiness import WorkerRecord
from gateway.services.exporter import ExportRunner
from gateway.services.failures import FailurePolicy, LetterFor, envelope_letter, reason_of
from gateway.services.jobs import JobRunner
from gateway.services.large_messages import LargeMessages
from gateway.services.letters import LetterBox
from gateway.services.listener import rules_for
from gateway.services.outages import Gate, Outages, until_available
from gateway.services.pipeline import Pipeline
from gateway.services.replay import enqueue_on
from gateway.services.subscriptions import SubscriptionRunner, load_subscription_file
from gateway.store.feed import read_changes
from gateway.store.resources import ResourceStore
from gateway.store.subscriptions import SubscriptionStore

log = logging.getLogger(__name__)
#: Threads of the replay queue per worker process (operator jobs; live traffic has the rest).
REPLAY_THREADS = 2


class _OneBrokerManyWorkers(logging.Filter):
    """Several dramatiq Workers share our broker on purpose (one per queue family); each adds
    its own consumer middleware, which dramatiq warns about."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_WorkerMiddleware" not in record.getMessage()


logging.getLogger("dramatiq.broker.GatewayBroker").addFilter(_OneBrokerManyWorkers())


def build_broker(
    settings: Settings,
    redis_url: str,
    pipeline: Pipeline,
    engine: Engine,
    sink_workers: dict[str, SinkWorker] | None = None,
    pace: ImportPace | None = None,
    consumer_prefix: str | None = None,
) -> tuple[GatewayBroker, Outages, LetterBox]:
    """A broker with the failure policy, the pipeline actors (live, replay, import: ``pace``, by
    default one on this broker's Redis), and one actor per remote sink; the outage gates and the
    letter box the policy uses. ``consumer_prefix``: see gateway/queue/broker.py ``make_broker``."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    keys = Keys(settings.storage.redis_namespace)
    letters = LetterBox(DeadLetterStore(engine), client, keys)
    ceiling = settings.worker.outage_max_backoff_s
    outages = Outages(
        [
            Gate("database", lambda: write_probe(engine), max_backoff_s=ceiling),
            Gate("redis", lambda: client.set(keys.probe(), int(time.time() * 1000)), max_backoff_s=ceiling),
        ]
    )
    workers = sink_workers if sink_workers is not None else {}
    letter_for: dict[str, LetterFor] = {ACTOR: envelope_letter, REPLAY_ACTOR: envelope_letter}
    letter_for[IMPORT_ACTOR] = envelope_letter
    for spec in settings.sinks.specs:
        letter_for[actor_name(spec)] = functools.partial(_sink_letter, workers, spec.name)
    policy = FailurePolicy(outages, letters, letter_for, max_retries=settings.worker.max_retries)
    broker = make_broker(
        redis_url,
        namespace=settings.storage.redis_namespace,
        heartbeat_timeout_ms=settings.worker.heartbeat_timeout_ms,
        middleware=[policy],
        consumer_prefix=consumer_prefix,
    )
    outages.gates["redis"].on_recovery.append(lambda: setattr(broker, "identity_lost", True))

    large = LargeMessages(settings.worker.large_messages_bytes)

    def process_message(envelope: dict[str, Any]) -> None:
        message = Envelope.from_json(envelope)
        with large.hold(len(message.raw)):
            pipeline.process(message)

    dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, broker=broker, throws=(Exception,))(process_message)
    # Replayed and reprocessed messages: the same pipeline, from the operator jobs' own queue.
    dramatiq.actor(actor_name=REPLAY_ACTOR, queue_name=REPLAY_QUEUE, broker=broker, throws=(Exception,))(
        process_message
    )
    # Imported batch files: the same pipeline again, each message started on the gateway's shared
    # pace (HL7GW_IMPORT_RATE, and never while live messages wait for a worker).
    pace = pace or ImportPace(client, keys, settings.worker.import_rate)

    def process_imported(envelope: dict[str, Any]) -> None:
        pace.wait()
        message = Envelope.from_json(envelope)
        with large.hold(len(message.raw)):
            pipeline.process(message, live=False)

    dramatiq.actor(actor_name=IMPORT_ACTOR, queue_name=IMPORT_QUEUE, broker=broker, throws=(Exception,))(
        process_imported
    )
    for spec in settings.sinks.specs:

        def deliver(payload: dict[str, Any], _name: str = spec.name) -> None:
            workers[_name].handle(SinkMessage.from_json(payload))

        dramatiq.actor(actor_name=actor_name(spec), queue_name=spec.queue, broker=broker, throws=(Exception,))(deliver)
    return broker, outages, letters


def _sink_letter(workers: dict[str, SinkWorker], sink: str, message: Any, exc: BaseException, attempts: int) -> Letter:
    """The dead letter of a sink message whose delivery failed in an unexpected way (a bug)."""
    sink_message = SinkMessage.from_json(message.args[0])
    letter = workers[sink].letter(sink_message, reason_of(exc), type(exc).__name__, attempted=False)
    return dataclasses.replace(letter, attempts=max(letter.attempts, attempts))


def sink_workers_for(
    settings: Settings, engine: Engine, broker: RedisBroker, fanout: SinkFanout, letters: LetterBox
) -> dict[str, SinkWorker]:
    """A SinkWorker per configured remote sink, sharing the database and Redis of this process."""
    keys = Keys(settings.storage.redis_namespace)
    states, store = DeliveryStates(engine), ResourceStore(engine)
    archive = MessageArchive(engine)
    workers = {}
    for spec in settings.sinks.specs:
        breaker = CircuitBreaker(
            broker.client,
            keys,
            spec.name,
            threshold=settings.sinks.breaker_failures,
            cooldown_s=settings.sinks.breaker_cooldown_s,
            max_cooldown_s=settings.sinks.max_backoff_s,
            probe_s=spec.timeout * 3,
        )
        workers[spec.name] = SinkWorker(
            RemoteSink(spec),
            breaker,
            states,
            store,
            archive,
            letters.post,
            fanout.send,
            max_age_s=settings.sinks.max_age_s,
            max_backoff_s=settings.sinks.max_backoff_s,
        )
    return workers


def _subscription_thread(
    settings: Settings, engine: Engine, client: redis.Redis, stop: threading.Event
) -> threading.Thread:
    """Load HL7GW_SUBSCRIPTIONS_FILE, and make the thread that dispatches and sends notifications
    while this process holds the dispatcher's lease (gateway/services/subscriptions.py)."""
    path, store = settings.subscriptions.file, SubscriptionStore(engine)
    if path is not None:
        until_available(
            "database", lambda: load_subscription_file(path, store), max_backoff_s=settings.worker.outage_max_backoff_s
        )
    runner = SubscriptionRunner(
        engine, client, Keys(settings.storage.redis_namespace), settings.subscriptions, read_changes
    )
    return threading.Thread(target=runner.run, args=(stop,), name="subscriptions", daemon=True)


def log_time_zones(conversion: ConversionSettings) -> None:
    """Say once, at start, in which zone timestamps without an offset are read."""
    if conversion.default_tz:
        log.info("timestamps without an offset: read in %s (HL7GW_DEFAULT_TZ)", conversion.default_tz)
        return
    host = conversion.host_tz or "no zone (the host's is unknown: such a time keeps only its date)"
    log.info(
        "timestamps without an offset: read in the zone of the message's MSH-7 offset, else the host's, %s "
        "(HL7GW_DEFAULT_TZ or HL7GW_SENDER_TZ to choose)",
        host,
    )


def tune_garbage_collector() -> None:
    """Move what is loaded once (mappings, models, compiled maps) out of the collector's sight and
    collect young objects less often: with the defaults the cyclic collector took ~20% of the
    worker's CPU, walking the same long-lived objects again and again. Cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def worker_record(converter: Converter) -> bytes:
    """What this worker tells readiness probes (gateway/readiness.py WorkerRecord): no PHI, no secret."""
    return WorkerRecord(os.getpid(), socket.gethostname(), len(converter.plans), int(time.time() * 1000)).encode()


def run_worker(
    settings: Settings, redis_url: str, stop: threading.Event, ready: Callable[[], None] | None = None
) -> None:
    """Consume until ``stop`` is set, then drain: finish running messages, requeue prefetched ones.
    ``ready`` is called once every consumer runs."""
    engine = make_engine(settings.storage.database_url)
    until_available("database", lambda: migrate(engine), max_backoff_s=settings.worker.outage_max_backoff_s)
    log_time_zones(settings.conversion)
    pipeline = Pipeline(Converter.configured(settings.conversion), StoreSink(engine), MessageArchive(engine))
    tune_garbage_collector()
    sink_workers: dict[str, SinkWorker] = {}
    pace_client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    pace = ImportPace(pace_client, Keys(settings.storage.redis_namespace), settings.worker.import_rate)
    # Under hl7gw run, identities it knows: it gives back at once what this process held if it dies.
    prefix = consumer_prefix()
    broker, outages, letters = build_broker(settings, redis_url, pipeline, engine, sink_workers, pace, prefix)
    if settings.sinks.specs:
        pipeline.fanout = fanout = SinkFanout(broker, settings.sinks.specs)
        sink_workers.update(sink_workers_for(settings, engine, broker, fanout, letters))
    # One dramatiq Worker per queue family: the pipeline's threads never wait on a remote server,
    # and each sink's threads only on its own.
    live = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=settings.worker.threads, worker_timeout=500)
    # A live message of this process waiting for a thread: no import message starts meanwhile.
    pace.live_waiting = lambda: live.work_queue.qsize() > 0
    workers = [live]
    # Replays and reprocesses get few threads of their own: a bulk job never crowds out live traffic.
    workers += [dramatiq.Worker(broker, queues={REPLAY_QUEUE}, worker_threads=REPLAY_THREADS, worker_timeout=500)]
    # So do imports, on their own pace (gateway/queue/pacing.py).
    import_threads = settings.worker.import_threads
    workers += [dramatiq.Worker(broker, queues={IMPORT_QUEUE}, worker_threads=import_threads, worker_timeout=500)]
    workers += [
        dramatiq.Worker(broker, queues={spec.queue}, worker_threads=spec.concurrency, worker_timeout=500)
        for spec in settings.sinks.specs
    ]
    maintenance = QueueMaintenance(
        broker,
        redis_gate=outages.gates["redis"],
        move_parked=letters.move_parked,
        # Heartbeats start only now, with the mappings compiled: readiness reads this next to them.
        record=worker_record(pipeline.converter),
    )
    jobs = JobRunner(
        engine,
        enqueue_on(broker, REPLAY_QUEUE, REPLAY_ACTOR),
        settings.worker.replay_rate,
        triage=Triage(rules_for(settings, pipeline.converter)),
    )
    job_thread = threading.Thread(target=jobs.run, args=(stop,), name="operator-jobs", daemon=True)
    subscription_thread = _subscription_thread(settings, engine, pace_client, stop)
    exports = ExportRunner(engine, settings.export)
    export_thread = threading.Thread(target=exports.run, args=(stop,), name="bulk-export", daemon=True)
    for worker in workers:
        worker.start()
    maintenance.start()
    job_thread.start()
    subscription_thread.start()
    export_thread.start()
    log.info("worker started: %d thread(s), %d remote sink(s)", settings.worker.threads, len(settings.sinks.specs))
    if ready is not None:
        ready()
    try:
        stop.wait()
    finally:
        log.info("worker draining")
        pace.stopping.set()
        job_thread.join(timeout=10)
        subscription_thread.join(timeout=20)
        export_thread.join(timeout=10)
        maintenance.stop()
        # Threads waiting out an outage hold their messages in flight: they are not waited for
        # long, and go back on the queue after the heartbeat timeout.
        timeout_ms = 60_000 if outages.all_open else 5_000
        for worker in workers:
            worker.stop(timeout=timeout_ms)
        outages.stop()
        broker.close()
        pipeline.sink.close()
        for sink_worker in sink_workers.values():
            sink_worker.remote.close()
        letters.client.close()
        pace_client.close()
        engine.dispose()
        log.info("worker stopped")
