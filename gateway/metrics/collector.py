"""What /metrics reads at scrape time rather than counts: the queues, workers, senders and sink
breakers in Redis (gateway/backlog.py), the open dead letters, the data dir's disk, the version.

Each part is read on its own: when Redis or the database does not answer, the scrape still gives
everything else, ``hl7gw_redis_up`` 0, and one more ``hl7gw_scrape_errors_total{part}``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from gateway.backlog import live_workers, pipeline_queues, read_backlog, senders_last_seen
from gateway.config import Settings
from gateway.errors import describe
from gateway.journal.dead_letters import DeadLetterStore
from gateway.keys import Keys
from gateway.metrics.labels import MAX_SENDERS

log = logging.getLogger(__name__)

#: Breaker states as the gauge gives them.
CLOSED, HALF_OPEN, OPEN = 0, 1, 2


@dataclass
class ScrapeSources:
    """Where the scrape-time figures come from (made by the process that serves /metrics)."""

    keys: Keys
    #: None: no Redis configured; its metrics are left out and ``hl7gw_redis_up`` is 0.
    redis_client: redis.Redis | None
    #: (sink name, its queue) per remote sink.
    sinks: tuple[tuple[str, str], ...]
    heartbeat_timeout_ms: int
    breaker_threshold: int
    silence_s: float
    sender_silence_s: Mapping[str, float]
    data_dir: Path
    #: The number of open dead letters (a COUNT on the journal); None: not counted.
    open_dead_letters: Callable[[], int] | None
    version: str
    clock: Callable[[], float] = field(default=time.time)


class GatewayCollector:
    """A prometheus_client collector of the scrape-time figures."""

    def __init__(self, sources: ScrapeSources):
        self.sources = sources
        self.errors: dict[str, int] = {"redis": 0, "database": 0, "disk": 0}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        build = GaugeMetricFamily("hl7gw_build_info", "The running version (value 1)", labels=["version"])
        build.add_metric([s.version], 1)
        yield build
        yield from self._part("redis", self._redis)
        yield from self._part("database", self._database)
        yield from self._part("disk", self._disk)
        errors = CounterMetricFamily(
            "hl7gw_scrape_errors", "Parts of a scrape that failed (Redis, database, disk)", labels=["part"]
        )
        for part, count in self.errors.items():
            errors.add_metric([part], count)
        yield errors

    def _part(self, part: str, read: Callable[[], list[Metric]]) -> list[Metric]:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not fail the scrape
            self.errors[part] += 1
            log.warning("metrics: cannot read the %s part: %s", part, describe(exc))
            if part == "redis":
                up = GaugeMetricFamily("hl7gw_redis_up", "1 when Redis answered this scrape")
                up.add_metric([], 0)
                return [up]
            return []

    def _redis(self) -> list[Metric]:
        s = self.sources
        up = GaugeMetricFamily("hl7gw_redis_up", "1 when Redis answered this scrape")
        client = s.redis_client
        if client is None:
            up.add_metric([], 0)
            return [up]
        uptime = int(client.info("server")["uptime_in_seconds"])
        now_ms = int(s.clock() * 1000)
        workers = live_workers(client, s.keys, s.heartbeat_timeout_ms, now_ms)
        backlog = read_backlog(client, s.keys, pipeline_queues(q for _, q in s.sinks), workers, now_ms)
        seen = senders_last_seen(client, s.keys)
        breakers = self._breakers(client, now_ms)
        up.add_metric([], 1)
        found: list[Metric] = [up, _gauge("hl7gw_redis_uptime_seconds", "Seconds since Redis started", uptime)]
        found.append(_gauge("hl7gw_workers_alive", "Worker processes with a recent heartbeat", len(workers)))
        depth = GaugeMetricFamily("hl7gw_queue_depth", "Messages queued: waiting or in flight", labels=["queue"])
        in_flight = GaugeMetricFamily("hl7gw_queue_in_flight", "Messages fetched by a worker", labels=["queue"])
        delayed = GaugeMetricFamily("hl7gw_queue_delayed", "Retries waiting for their time", labels=["queue"])
        oldest = GaugeMetricFamily(
            "hl7gw_queue_oldest_age_seconds", "Age of the oldest waiting or in-flight message", labels=["queue"]
        )
        for queue in backlog:
            depth.add_metric([queue.queue], queue.depth)
            in_flight.add_metric([queue.queue], queue.in_flight)
            delayed.add_metric([queue.queue], queue.delayed)
            oldest.add_metric([queue.queue], queue.oldest_age_s)
        found += [depth, in_flight, delayed, oldest]
        found += self._senders(seen)
        state = GaugeMetricFamily(
            "hl7gw_sink_breaker_state",
            "A remote sink's circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["sink"],
        )
        for sink, value in breakers.items():
            state.add_metric([sink], value)
        found.append(state)
        return found

    def _senders(self, seen: dict[str, float]) -> list[Metric]:
        s = self.sources
        last = GaugeMetricFamily(
            "hl7gw_sender_last_message_timestamp_seconds",
            "Unix time of the last message accepted from a sender",
            labels=["sender"],
        )
        threshold = GaugeMetricFamily(
            "hl7gw_sender_silence_threshold_seconds",
            "Longest expected gap between a sender's messages (HL7GW_SENDER_SILENCE_S, HL7GW_SENDER_SILENCE)",
            labels=["sender"],
        )
        # The most recently heard first, as many as the sender label allows.
        recent = sorted(seen.items(), key=lambda item: -item[1])[:MAX_SENDERS]
        for sender, when in recent:
            last.add_metric([sender], when)
        for sender in dict.fromkeys([*(name for name, _ in recent), *s.sender_silence_s]):
            threshold.add_metric([sender], s.sender_silence_s.get(sender, s.silence_s))
        return [last, threshold]

    def _breakers(self, client: redis.Redis, now_ms: int) -> dict[str, int]:
        s = self.sources
        if not s.sinks:
            return {}
        pipe = client.pipeline(transaction=False)
        for name, _ in s.sinks:
            pipe.hmget(s.keys.sink_breaker(name), "failures", "open_until")
        states = {}
        for (name, _), (failures, open_until) in zip(s.sinks, pipe.execute()):
            if failures is None or int(failures) < s.breaker_threshold:
                states[name] = CLOSED
            else:
                states[name] = OPEN if int(open_until or 0) > now_ms else HALF_OPEN
        return states

    def _database(self) -> list[Metric]:
        count = self.sources.open_dead_letters
        if count is None:
            return []
        return [_gauge("hl7gw_dead_letters_open", "Dead letters waiting for an operator", count())]

    def _disk(self) -> list[Metric]:
        usage = shutil.disk_usage(self.sources.data_dir)
        return [
            _gauge("hl7gw_data_dir_free_bytes", "Free bytes on the data dir's filesystem", usage.free),
            _gauge("hl7gw_data_dir_size_bytes", "Size in bytes of the data dir's filesystem", usage.total),
        ]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def sources_from(settings: Settings, engine: Engine | None, version: str) -> ScrapeSources:
    """The scrape sources of a process with these settings (its Redis: HL7GW_REDIS_URL, which
    ``hl7gw run`` gives its children) and database ``engine``."""
    url = settings.storage.redis_url
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
    letters = DeadLetterStore(engine).count_open if engine is not None else None
    return ScrapeSources(
        keys=Keys(settings.storage.redis_namespace),
        redis_client=client,
        sinks=tuple((spec.name, spec.queue) for spec in settings.sinks.specs),
        heartbeat_timeout_ms=settings.worker.heartbeat_timeout_ms,
        breaker_threshold=settings.sinks.breaker_failures,
        silence_s=settings.prometheus.silence_s,
        sender_silence_s=settings.prometheus.sender_silence_s,
        data_dir=settings.storage.data_dir,
        open_dead_letters=letters,
        version=version,
    )
