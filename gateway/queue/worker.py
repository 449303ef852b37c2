"""The worker process: Dramatiq threads running the pipeline on queued envelopes."""

from __future__ import annotations

import logging
import threading

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from gateway.config import Settings
from gateway.convert.engine import Converter
from gateway.deadletter import DeadLetterStore
from gateway.deliver.store_sink import StoreSink
from gateway.envelope import Envelope
from gateway.errors import is_retryable
from gateway.pipeline import Pipeline
from gateway.queue.broker import QueueMaintenance, make_broker
from gateway.queue.keys import ACTOR, QUEUE
from gateway.queue.middleware import DeadLetters, PermanentFailure
from gateway.store.db import create_schema, make_engine
from gateway.store.messages import MessageArchive

log = logging.getLogger(__name__)


def build_broker(settings: Settings, redis_url: str, pipeline: Pipeline, engine) -> RedisBroker:  # type: ignore[no-untyped-def]
    """A broker with our middleware and the one actor bound to ``pipeline``."""
    broker = make_broker(
        redis_url,
        namespace=settings.redis_namespace,
        heartbeat_timeout_ms=settings.heartbeat_timeout_ms,
        max_retries=settings.max_retries,
        extra_middleware=[DeadLetters(DeadLetterStore(engine), pipeline.archive)],
    )
    max_retries = settings.max_retries

    def process_message(envelope: dict) -> None:
        try:
            pipeline.process(Envelope.from_json(envelope))
        except Exception as exc:
            if is_retryable(exc):
                raise
            raise PermanentFailure(exc) from exc

    dramatiq.actor(
        process_message,
        actor_name=ACTOR,
        queue_name=QUEUE,
        broker=broker,
        throws=(PermanentFailure,),
        retry_when=lambda retries, exc: is_retryable(exc) and retries < max_retries,
    )
    return broker


def run_worker(settings: Settings, redis_url: str, stop: threading.Event) -> None:
    """Consume until ``stop`` is set, then drain: finish running messages, requeue prefetched ones."""
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    pipeline = Pipeline(Converter.load(), StoreSink(engine), MessageArchive(engine))
    broker = build_broker(settings, redis_url, pipeline, engine)
    worker = dramatiq.Worker(broker, worker_threads=settings.worker_threads, worker_timeout=500)
    maintenance = QueueMaintenance(broker)
    worker.start()
    maintenance.start()
    log.info("worker started: %d thread(s)", settings.worker_threads)
    try:
        stop.wait()
    finally:
        log.info("worker draining")
        maintenance.stop()
        worker.stop(timeout=60_000)
        broker.close()
        engine.dispose()
        log.info("worker stopped")
