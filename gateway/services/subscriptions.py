"""Subscriptions in a worker process: the configured ones loaded at start, and, in the one worker
holding the dispatcher's lease, the dispatcher and a sender thread per running Subscription.

Every worker process runs a ``SubscriptionRunner`` thread; each tries to hold the lease (a row in
the database, gateway/store/subscription_outbox.py) every few seconds. The holder dispatches the
history feed into the outbox and sends each subscription's queue in order; when it stops or dies,
another worker takes the lease once it expires and carries on from the outbox and the persisted
feed position. A notification being sent when the holder died is sent again by the next one
(at-least-once; the event number tells the subscriber it has seen it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import SubscriptionSettings
from gateway.deliver.breaker import CircuitBreaker
from gateway.deliver.rest_hook import RestHook
from gateway.deliver.subscription_delivery import DeliveryPolicy, SubscriptionDelivery
from gateway.deliver.subscription_dispatch import Dispatcher, ReadChanges
from gateway.errors import ConfigError, describe
from gateway.journal.dead_letters import DeadLetterStore
from gateway.keys import Keys
from gateway.store.subscription_outbox import DispatchLease, LeaseLost, Outbox
from gateway.store.subscription_resource import SubscriptionInvalid
from gateway.store.subscriptions import CONFIG, StoredSubscription, SubscriptionStore

log = logging.getLogger(__name__)

#: How long the lease lasts without renewal; renewed every third of it. A holder whose renewal
#: is late (a database slow to answer) stops sending at 80% of it, before another may take over.
LEASE_S = 30.0
#: Pages dispatched in a row before the runner looks at its lease and threads again.
PAGES_PER_ROUND = 20
#: Sent events are kept this long (for operators), then pruned, every PRUNE_EVERY_S.
SENT_KEPT_S = 7 * 86_400
PRUNE_EVERY_S = 600


def load_subscription_file(path: Path, store: SubscriptionStore) -> list[str]:
    """Write the Subscriptions of ``path`` (origin ``config``) and turn off the configured ones it no
    longer holds; returns the ids it holds. Raises ConfigError naming the bad entry."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"HL7GW_SUBSCRIPTIONS_FILE {path}: cannot read it ({type(exc).__name__})") from None
    items = _items(data)
    ids = []
    for number, item in enumerate(items):
        resource_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(resource_id, str):
            raise ConfigError(f"HL7GW_SUBSCRIPTIONS_FILE {path}: subscription #{number + 1} has no id")
        try:
            store.put(item, resource_id, origin=CONFIG)
        except SubscriptionInvalid as exc:
            raise ConfigError(f"HL7GW_SUBSCRIPTIONS_FILE {path}: Subscription/{resource_id}: {exc}") from None
        ids.append(resource_id)
    for gone in store.turn_off_missing(set(ids)):
        log.info("Subscription/%s is no longer in %s: off", gone, path)
    return ids


def _items(data: Any) -> list[Any]:
    """A list of Subscriptions, ``{"subscriptions": [...]}``, or a Bundle of them."""
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return [entry.get("resource") for entry in data.get("entry") or []]
    if isinstance(data, dict) and "subscriptions" in data:
        data = data["subscriptions"]
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise ConfigError("HL7GW_SUBSCRIPTIONS_FILE must hold a list of Subscription resources")
    return data


class _Sender:
    """One subscription's sender thread."""

    def __init__(self, delivery: SubscriptionDelivery, stop: threading.Event):
        self.delivery = delivery
        self.version = delivery.stored.version_id
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._outer = stop
        self.thread = threading.Thread(target=self._run, name=f"subscription-{delivery.spec.id}"[:40], daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set() and not self._outer.is_set():
            try:
                wait = self.delivery.step()
            except (SQLAlchemyError, redis.RedisError) as exc:
                log.warning("Subscription/%s: sending paused: %s", self.delivery.spec.id, describe(exc))
                wait = 2.0
            except Exception as exc:  # a bug: say so, and keep the thread (and the queue's order)
                log.error("Subscription/%s: sending failed: %s", self.delivery.spec.id, describe(exc), exc_info=exc)
                wait = 5.0
            if wait > 0:
                self.wake.wait(min(wait, 5.0))
                self.wake.clear()
        self.delivery.close()

    def halt(self) -> None:
        self.stop.set()
        self.wake.set()


class SubscriptionRunner:
    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        keys: Keys,
        settings: SubscriptionSettings,
        read_changes: ReadChanges,
        owner: str | None = None,
    ):
        self.engine = engine
        self.client = client
        self.keys = keys
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = DispatchLease(engine, self.owner, LEASE_S)
        self.subscriptions = SubscriptionStore(engine)
        self.outbox = Outbox(engine)
        self.letters = DeadLetterStore(engine)
        self.dispatcher = Dispatcher(engine, self.lease, read_changes, on_recorded=self._wake)
        self.policy = DeliveryPolicy(settings.base_url, settings.batch_max, settings.max_backoff_s)
        self.senders: dict[str, _Sender] = {}
        self.holding = False

    def run(self, stop: threading.Event) -> None:
        renew_every = LEASE_S / 3
        last_renewal = 0.0
        last_prune = _monotonic()
        clock = threading.Event()  # only for its wait
        try:
            while not stop.is_set():
                now = _monotonic()
                if now - last_renewal >= renew_every or not self.holding:
                    self._hold()
                    last_renewal = now
                if not self.holding:
                    clock.wait(renew_every if not stop.is_set() else 0)
                    continue
                try:
                    busy = self._dispatch(stop)
                except Exception as exc:  # a bug: say so, and try again (the outbox is consistent)
                    log.error("subscriptions: dispatching failed: %s", describe(exc), exc_info=exc)
                    self.dispatcher.forget()
                    busy = False
                    stop.wait(5.0)
                if now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    self._prune()
                if not busy:
                    stop.wait(self.settings.poll_s)
        finally:
            self._stop_senders()
            self.dispatcher.close()
            if self.holding:
                try:
                    self.lease.release()
                except SQLAlchemyError:
                    pass

    def _hold(self) -> None:
        try:
            held = self.lease.hold()
        except SQLAlchemyError as exc:
            log.warning("subscriptions: cannot reach the database for the dispatcher's lease: %s", describe(exc))
            held = False
        if held != self.holding:
            self.dispatcher.forget()
            log.info("subscriptions: %s the dispatcher's lease", "took" if held else "lost")
            if not held:
                self._stop_senders()
        self.holding = held

    def _dispatch(self, stop: threading.Event) -> bool:
        """Activate new subscriptions, dispatch a few pages, start and stop senders; True when
        there may be more to dispatch."""
        try:
            current = [s for s in self.subscriptions.all() if s.status != "off"]
            if any(s.status == "requested" for s in current):
                self.dispatcher.activate()
                current = [s for s in self.subscriptions.all() if s.status != "off"]
            running = [s for s in current if s.status in ("active", "error") and self._usable(s)]
            self._sync_senders(running, stop)
            for _ in range(PAGES_PER_ROUND):
                if self.dispatcher.run_once(running) == 0:
                    return False
            return True
        except LeaseLost:
            self.holding = False
            self.dispatcher.forget()
            self._stop_senders()
            log.info("subscriptions: lost the dispatcher's lease")
        except SQLAlchemyError as exc:
            self.dispatcher.forget()
            log.warning("subscriptions: dispatching paused: %s", describe(exc))
        return False

    def _usable(self, stored: StoredSubscription) -> bool:
        """Whether a stored subscription still parses (a criteria may not, after an upgrade that
        dropped a search parameter): one that does not is set to error and left out."""
        try:
            stored.spec()
        except SubscriptionInvalid as exc:
            if self.subscriptions.set_error(stored.id, f"not valid any more: {exc}"):
                log.warning("Subscription/%s: not valid any more, status error: %s", stored.id, exc)
            return False
        return True

    def _prune(self) -> None:
        try:
            pruned = self.outbox.prune(int((time.time() - SENT_KEPT_S) * 1000))
        except SQLAlchemyError as exc:
            log.warning("subscriptions: pruning sent notifications failed: %s", describe(exc))
            return
        if pruned:
            log.info(
                "subscriptions: %d notification event(s) sent over %d days ago forgotten", pruned, SENT_KEPT_S // 86_400
            )

    def _sync_senders(self, current: list[StoredSubscription], stop: threading.Event) -> None:
        running = {s.id: s for s in current}
        for subscription_id in list(self.senders):
            sender = self.senders[subscription_id]
            stored = running.get(subscription_id)
            if stored is None or stored.version_id != sender.version or not sender.thread.is_alive():
                sender.halt()
                del self.senders[subscription_id]
        for subscription_id, stored in running.items():
            if subscription_id not in self.senders:
                sender = _Sender(self._delivery(stored), stop)
                self.senders[subscription_id] = sender
                sender.thread.start()

    def _delivery(self, stored: StoredSubscription) -> SubscriptionDelivery:
        spec = stored.spec()
        breaker = CircuitBreaker(
            self.client,
            self.keys,
            f"subscription:{spec.id}",
            threshold=self.settings.breaker_failures,
            cooldown_s=self.settings.breaker_cooldown_s,
            max_cooldown_s=self.settings.max_backoff_s,
            probe_s=self.settings.timeout_s * 3,
        )
        hook = RestHook(spec, self.settings.timeout_s)
        return SubscriptionDelivery(
            stored, hook, breaker, self.outbox, self.subscriptions, self.letters, self.policy, may_send=self.lease.valid
        )

    def _wake(self, numbered: dict[str, list[int]]) -> None:
        for subscription_id in numbered:
            sender = self.senders.get(subscription_id)
            if sender is not None:
                sender.wake.set()

    def _stop_senders(self) -> None:
        for sender in self.senders.values():
            sender.halt()
        for sender in self.senders.values():
            sender.thread.join(timeout=15)
        self.senders.clear()


def _monotonic() -> float:
    return time.monotonic()
