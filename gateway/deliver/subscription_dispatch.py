"""The dispatcher: follows the history feed from its persisted position, matches each change against
every running Subscription's criteria, and queues the matches with their event numbers.

One page at a time: read the changes after the position (only the types some subscription
follows), match them (gateway/store/subscription_criteria.py: on the version each change wrote;
a deletion is matched on the version before it), then number the matches and move the position
in one transaction (gateway/store/subscription_outbox.py ``record``). A subscription matches the
changes written at or after it became active.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from gateway.store.feed import Change, FeedPage
from gateway.store.resources import ResourceStore
from gateway.store.subscription_criteria import Candidate, CriteriaMatcher
from gateway.store.subscription_outbox import DispatchLease, Matched, record
from gateway.store.subscriptions import StoredSubscription, SubscriptionStore

log = logging.getLogger(__name__)


#: ``read_changes(conn, after, count, types, since)`` of gateway/store/feed.py.
ReadChanges = Callable[[Connection, str | None, int, Collection[str] | None, datetime | None], FeedPage]


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        lease: DispatchLease,
        read_changes: ReadChanges,
        *,
        page_size: int = 500,
        on_recorded: Callable[[dict[str, list[int]]], None] = lambda numbered: None,
    ):
        self.engine = engine
        self.lease = lease
        self.read_changes = read_changes
        self.page_size = page_size
        self.subscriptions = SubscriptionStore(engine)
        self.store = ResourceStore(engine)
        self.matcher = CriteriaMatcher()
        self.on_recorded = on_recorded
        #: The feed position after the last page this process recorded, when known.
        self._position: tuple[str | None] | None = None

    def close(self) -> None:
        self.matcher.close()

    def activate(self) -> list[str]:
        """Requested subscriptions become active, matching changes written from now on."""
        with self.engine.connect() as conn:  # a read first: most rounds have nothing to activate
            if not self.subscriptions.requested(conn):
                return []
        with self.engine.begin() as conn:
            activated = self.subscriptions.activate_requested(conn, _now())
        for subscription_id in activated:
            log.info("Subscription/%s active", subscription_id)
        return activated

    def forget(self) -> None:
        """Read the feed position from the database again (the lease was lost or taken anew)."""
        self._position = None

    def run_once(self, running: list[StoredSubscription] | None = None) -> int:
        """Dispatch one page for the ``running`` subscriptions (read when not given); returns how
        many changes it held (0: caught up, or nothing to follow). Raises LeaseLost when another
        process took the lease meanwhile (nothing was recorded)."""
        if running is None:
            running = self.subscriptions.running()
        if not running:
            return 0
        types = sorted({s.spec().criteria.resource_type for s in running})
        with self.engine.connect() as conn:
            # While this process holds the lease nobody else moves the position: kept in memory.
            position = self._position[0] if self._position is not None else self.lease.position(conn)
            # Nothing before the earliest activation can match: the feed need not read it (the
            # first page ever, or after a time without subscriptions).
            since = min((s.active_since for s in running if s.active_since), default=None)
            page = self.read_changes(conn, position, self.page_size, types, since)
        changes = list(page.changes)
        following = page.next_position or (changes[-1].position if changes else position)
        if not changes and following == position:
            self._position = (position,)
            return 0
        matched = self.match(changes, running)
        self._position = None
        with self.engine.begin() as conn:
            numbered = record(conn, self.lease.owner, matched, following)
        self._position = (following,)
        if numbered:
            self.on_recorded(numbered)
        return len(changes)

    def match(self, changes: list[Change], running: list[StoredSubscription]) -> list[Matched]:
        """The (subscription, change) pairs that match, in feed order per subscription."""
        contents = self._contents(changes)
        # A resource may change twice in one page: match in rounds, each (type, id) once per round.
        rounds: list[list[int]] = []
        seen: dict[tuple[str, str], int] = {}
        for index, change in enumerate(changes):
            key = (change.resource_type, change.resource_id)
            level = seen.get(key, -1) + 1
            seen[key] = level
            if level == len(rounds):
                rounds.append([])
            rounds[level].append(index)
        hits: set[tuple[int, str]] = set()
        specs = [(s, s.spec()) for s in running]
        for indexes in rounds:
            candidates = []
            for i in indexes:
                content = contents[i]
                if content is not None:
                    change = changes[i]
                    candidates.append(Candidate(change.resource_type, change.resource_id, change.last_updated, content))
            found = self.matcher.match(candidates, {spec.criteria for _, spec in specs})
            by_key = {(changes[i].resource_type, changes[i].resource_id): i for i in indexes}
            for stored, spec in specs:
                for key in found.get(spec.criteria.text, ()):
                    hits.add((by_key[key], stored.id))
        matched = []
        for index, change in enumerate(changes):
            for stored, _spec in specs:
                if (index, stored.id) not in hits:
                    continue
                if stored.active_since is not None and change.last_updated < stored.active_since:
                    continue
                matched.append(
                    Matched(
                        stored.id,
                        change.resource_type,
                        change.resource_id,
                        change.version_id,
                        change.deleted,
                        change.last_updated,
                    )
                )
        return matched

    def _contents(self, changes: list[Change]) -> list[dict[str, Any] | None]:
        """The content each change is matched on: its own, or for a deletion the version before."""
        contents: list[dict[str, Any] | None] = []
        for change in changes:
            if not change.deleted:
                contents.append(change.resource)
                continue
            before = None
            if change.version_id > 1:
                stored = self.store.vread(change.resource_type, change.resource_id, change.version_id - 1)
                before = stored.resource if stored is not None and not stored.deleted else None
            contents.append(before)
        return contents


def _now() -> datetime:
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
