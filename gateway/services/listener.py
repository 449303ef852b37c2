"""The MLLP listener process: settings in, listener and group commit running until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.mllp.limits import Limits
from gateway.mllp.server import MllpServer
from gateway.mllp.tls import server_context
from gateway.mllp.triage import IntakeRules, Triage
from gateway.procutil import signal_ready
from gateway.queue.durability import DurabilityGuard
from gateway.queue.intake import Intake
from gateway.services.batch_frames import BatchFrames

if TYPE_CHECKING:
    from gateway.convert.runtime.engine import Converter

log = logging.getLogger(__name__)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_message_bytes=settings.mllp.max_message_bytes,
        frame_timeout_s=settings.mllp.frame_timeout_s,
        idle_timeout_s=settings.mllp.idle_timeout_s,
        max_connections=settings.mllp.max_connections,
        max_connections_per_peer=settings.mllp.max_connections_per_peer,
        allowed_peers=settings.mllp.allowed_peers,
        require_trailing_cr=settings.mllp.require_trailing_cr,
    )


def rules_from(
    settings: Settings, supports: Callable[[str, str], bool] | None, known_codes: frozenset[str] = frozenset()
) -> IntakeRules:
    return IntakeRules(
        versions=settings.intake.versions,
        processing_ids=settings.intake.processing_ids,
        supports=supports,
        known_codes=known_codes,
        reject_unsupported=settings.intake.reject_unsupported,
        honour_enhanced_mode=settings.intake.honour_enhanced_mode,
    )


def configured_rules(settings: Settings) -> IntakeRules:
    """The intake rules of these settings and mappings: AR 200/201 for message types no mapping
    converts (HL7GW_UNSUPPORTED_TYPES). Broken mappings must not stop intake: every type is then
    accepted, and messages wait in the queue for a fixed worker."""
    try:
        from gateway.convert.runtime.engine import Converter

        converter = Converter.configured(settings.conversion)
    except Exception as exc:  # noqa: BLE001
        log.error("mappings do not load (%s); accepting every message type", exc)
        return rules_from(settings, None)
    return rules_for(settings, converter)


def rules_for(settings: Settings, converter: Converter) -> IntakeRules:
    """The intake rules of these settings with the message types ``converter`` supports."""
    known_codes = frozenset(name.split("_", 1)[0] for name in converter.plans)
    return rules_from(settings, converter.supports, known_codes)


def build(settings: Settings, redis_url: str, rules: IntakeRules) -> tuple[Intake, MllpServer]:
    intake = Intake(
        redis_url,
        namespace=settings.storage.redis_namespace,
        batch_max=settings.intake.batch_max,
        timeout=settings.intake.commit_timeout_s,
        dedup_window_s=settings.intake.dedup_window_s,
        durability=DurabilityGuard(settings.storage.allow_volatile_redis),
    )
    tls = None
    if settings.mllp.tls_cert is not None:
        tls = server_context(settings.mllp.tls_cert, settings.mllp.tls_key, settings.mllp.tls_client_ca)
    server = MllpServer(
        intake,
        triage=Triage(rules),
        limits=limits_from(settings),
        ssl_context=tls,
        commit_acks=settings.mllp.commit_acks,
    )
    # A frame holding a batch is answered with a batch ACK (docs/batch.md, Batches over MLLP).
    server.batches = BatchFrames(intake, server.profiles, max_message_bytes=settings.mllp.max_message_bytes)
    return intake, server


async def serve(settings: Settings, redis_url: str, rules: IntakeRules) -> None:
    """Run until SIGTERM/SIGINT, then stop intake in order: no new frames, every read frame answered."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    intake, server = build(settings, redis_url, rules)
    await intake.start()
    await server.start(settings.mllp.host, settings.mllp.port)
    signal_ready()
    await stop.wait()
    log.info("MLLP listener stopping: no new connections, draining ACKs")
    await server.stop()
    await intake.close()


def run(settings: Settings, redis_url: str, rules: IntakeRules) -> None:
    asyncio.run(serve(settings, redis_url, rules))
