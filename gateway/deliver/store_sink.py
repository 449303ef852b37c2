"""Deliver converted Bundles into the built-in FHIR store, many messages per database transaction.

Each message's Bundle is applied all or nothing; its archive row ("processed", with what each entry
did) and its pending deliveries to remote sinks are written in the same transaction, so a commit
is the single point where a message counts as delivered. Worker threads share one group commit
(gateway/deliver/group_commit.py): one commit per batch instead of three per message. What does not
need the database (checking the Bundle, its search index rows) is done by each worker thread before
it hands the message over, so the writer holds the database's write lock only for the writing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from gateway.deliver.group_commit import GroupCommit
from gateway.envelope import Envelope
from gateway.journal.deliveries import open_deliveries
from gateway.journal.messages import MessageArchive
from gateway.store.index import rows_for_content
from gateway.store.ordering import Source
from gateway.store.resources import ApplyResult, Job, ResourceStore, delivery_error
from gateway.store.transaction import Change, plan_changes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreDelivery:
    """One message for the store."""

    changes: list[Change]
    source: Source | None = None
    #: The received message; with it the archive row is written in the same transaction.
    envelope: Envelope | None = None
    #: MSH-9 as code^trigger^structure, for the archive.
    message_type: str = ""
    #: Remote sinks that must get the message: their pending rows are written in the same transaction.
    sinks: tuple[str, ...] = field(default=())
    #: What the conversion could not carry over, for the archive row.
    notes: tuple[str, ...] = field(default=())


class StoreSink:
    """The default sink: a transaction Bundle becomes its share of one database transaction."""

    def __init__(self, engine: Engine, max_batch: int = 64):
        self.store = ResourceStore(engine)
        self.archive = MessageArchive(engine)
        self._commit: GroupCommit[StoreDelivery, ApplyResult] = GroupCommit(
            self._apply_batch, max_batch, "hl7gw-store-commit"
        )

    def deliver(
        self,
        bundle: dict[str, Any],
        source: Source | None = None,
        envelope: Envelope | None = None,
        message_type: str = "",
        sinks: tuple[str, ...] = (),
        notes: tuple[str, ...] = (),
    ) -> ApplyResult:
        """Apply ``bundle``; raises DeliveryError, or StoreUnavailable when the database does not answer."""
        changes = plan_changes(bundle)
        for change in changes:
            if change.resource is not None:  # made here, in parallel, not under the write lock
                rows_for_content(change.type, change.id, change.content_hash, change.resource)
        return self._commit.submit(StoreDelivery(changes, source, envelope, message_type, sinks, notes))

    @property
    def commits(self) -> int:
        """Database transactions committed so far (messages per commit shows how well batching works)."""
        return self._commit.batches

    def close(self) -> None:
        self._commit.close()

    def _apply_batch(self, deliveries: list[StoreDelivery]) -> Sequence[ApplyResult | BaseException]:
        try:
            return self._apply_together(deliveries)
        except SQLAlchemyError as exc:
            error = delivery_error(exc)
        if error.retryable or len(deliveries) == 1:
            return [error] * len(deliveries)
        # A permanent database error: apply one by one, so only the message that causes it fails.
        log.warning("batch of %d failed (%s); applying its messages one by one", len(deliveries), error)
        return [self._apply_alone(delivery) for delivery in deliveries]

    def _apply_alone(self, delivery: StoreDelivery) -> ApplyResult | BaseException:
        try:
            return self._apply_together([delivery])[0]
        except SQLAlchemyError as exc:
            return delivery_error(exc)

    def _apply_together(self, deliveries: list[StoreDelivery]) -> list[ApplyResult]:
        envelopes = [d.envelope for d in deliveries if d.envelope is not None]
        with self.store.transaction() as conn:
            first = self.archive.first_sequences(conn, envelopes) if envelopes else {}
            jobs = [Job(d.changes, _first_seq(d, first)) for d in deliveries]
            results = self.store.write(conn, jobs)
            archived = [
                (d.envelope, "processed", summary(result), d.message_type, "\n".join(d.notes))
                for d, result in zip(deliveries, results)
                if d.envelope is not None
            ]
            self.archive.record(conn, archived)
            open_deliveries(
                conn,
                [(d.envelope.id, sink, d.envelope.received_at) for d in deliveries if d.envelope for sink in d.sinks],
            )
            conn.commit()
        return results


def _first_seq(delivery: StoreDelivery, first: dict[str, int]) -> Source | None:
    source, envelope = delivery.source, delivery.envelope
    if source is None or envelope is None or envelope.id not in first:
        return source
    return replace(source, seq=first[envelope.id])


def summary(result: ApplyResult) -> str:
    """What a message did, for the archive detail: one "Type/id vN outcome" per entry."""
    parts = []
    for entry in (*result.entries, *result.moved):
        text = f"{entry.type}/{entry.id} v{entry.version_id} {entry.outcome}"
        if entry.superseded_by:
            text += f" by message {entry.superseded_by}"
        parts.append(text)
    return ", ".join(parts)[:4000]
