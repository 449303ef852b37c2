"""Every table of the gateway, in one place: the FHIR store (current resources, every version,
the search index, merges) and the journal (received messages, deliveries to remote sinks, which
message wrote which version, dead letters). Changing a table here needs a migration in
gateway/db/migrations/versions (docs/architecture.md); tests/test_db_migrations.py fails until
the migrations make exactly this schema.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# -- the FHIR store ------------------------------------------------------------------------------

# FHIR ids are at most 64 characters (datatypes.html#id); type names are shorter still.
_TYPE = String(64)
_ID = String(64)
# Index text is compared byte-wise on both backends (SQLite's BINARY collation, PostgreSQL's "C"),
# so prefix searches can use a plain range scan on the b-tree whatever the database locale.
_TEXT = String(256).with_variant(String(256, collation="C"), "postgresql")

fhir_resource = Table(
    "fhir_resource",
    metadata,
    Column("type", _TYPE, primary_key=True),
    Column("id", _ID, primary_key=True),
    Column("version_id", Integer, nullable=False),
    # Naive UTC, millisecond precision; equal to meta.lastUpdated of the content.
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # sha256 of the canonical JSON without meta; "" when deleted.
    Column("content_hash", String(64), nullable=False),
    # The resource JSON with meta.versionId/lastUpdated; NULL when deleted.
    Column("content", Text, nullable=True),
    # The message that last wrote it (gateway/store/ordering.py): source timestamp (naive UTC),
    # sender, per-sender sequence and archive id; NULL for writes not from a message.
    # version_id 0 (deleted, no history) is a tombstone: a DELETE that found nothing, kept so that
    # an older message cannot create the resource afterwards.
    Column("source_time", DateTime, nullable=True),
    Column("source_sender", String(512), nullable=True),
    Column("source_seq", BigInteger, nullable=True),
    Column("source_message", String(64), nullable=True),
)
Index("ix_fhir_resource_updated", fhir_resource.c.type, fhir_resource.c.last_updated)

fhir_resource_history = Table(
    "fhir_resource_history",
    metadata,
    Column("type", _TYPE, primary_key=True),
    Column("id", _ID, primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", DateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
    # Where this version stands in commit order (gateway/store/feed_positions.py): unique, and a
    # transaction's versions are numbered after every version of the transactions committed before it.
    Column("feed_position", BigInteger, nullable=False),
)
# Type history (GET [type]/_history) reads newest first within a type.
Index("ix_fhir_resource_history_updated", fhir_resource_history.c.type, fhir_resource_history.c.last_updated)
# The history feed (gateway/store/feed.py) reads in commit order, of every type or of some.
Index("ix_fhir_resource_history_feed", fhir_resource_history.c.feed_position, unique=True)
Index("ix_fhir_resource_history_type_feed", fhir_resource_history.c.type, fhir_resource_history.c.feed_position)

# One row (id 1): the last feed position handed out. A writer takes positions by updating it,
# which locks the row until the writer commits, so positions are handed out in commit order.
fhir_feed_counter = Table(
    "fhir_feed_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_position", BigInteger, nullable=False),
)

# Search index: one row per (resource, parameter, value). Each table has a lookup index that
# starts with (type, param, value...) and ends with id, so a search reads only the index, and an
# (type, id, param) index to check further parameters of a candidate and to drop rows on update.
fhir_search_token = Table(
    "fhir_search_token",
    metadata,
    Column("type", _TYPE, nullable=False),
    Column("id", _ID, nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", _TEXT, nullable=False),  # "" when the value has no system
    Column("code", _TEXT, nullable=False),
)
Index("ix_fhir_search_token_value", *(fhir_search_token.c[n] for n in ("type", "param", "code", "system", "id")))
Index("ix_fhir_search_token_resource", *(fhir_search_token.c[n] for n in ("type", "id", "param")))

fhir_search_string = Table(
    "fhir_search_string",
    metadata,
    Column("type", _TYPE, nullable=False),
    Column("id", _ID, nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", _TEXT, nullable=False),  # normalized: lower case, no accents
    Column("exact", _TEXT, nullable=False),  # as written, for :exact
)
Index("ix_fhir_search_string_value", *(fhir_search_string.c[n] for n in ("type", "param", "value", "id")))
Index("ix_fhir_search_string_resource", *(fhir_search_string.c[n] for n in ("type", "id", "param")))

fhir_search_date = Table(
    "fhir_search_date",
    metadata,
    Column("type", _TYPE, nullable=False),
    Column("id", _ID, nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", DateTime, nullable=False),  # inclusive, naive UTC
    Column("high", DateTime, nullable=False),  # exclusive
)
Index("ix_fhir_search_date_value", *(fhir_search_date.c[n] for n in ("type", "param", "low", "high", "id")))
Index("ix_fhir_search_date_resource", *(fhir_search_date.c[n] for n in ("type", "id", "param", "low", "high")))

fhir_search_reference = Table(
    "fhir_search_reference",
    metadata,
    Column("type", _TYPE, nullable=False),
    Column("id", _ID, nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", _TYPE, nullable=False),
    Column("target_id", _ID, nullable=False),
)
Index(
    "ix_fhir_search_reference_value",
    *(fhir_search_reference.c[n] for n in ("type", "param", "target_id", "target_type", "id")),
)
Index("ix_fhir_search_reference_resource", *(fhir_search_reference.c[n] for n in ("type", "id", "param")))

# Quantities (Observation.valueQuantity): the number as a double, with the unit's system, code and
# human text; a search by value reads a range of the lookup index.
fhir_search_quantity = Table(
    "fhir_search_quantity",
    metadata,
    Column("type", _TYPE, nullable=False),
    Column("id", _ID, nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", _TEXT, nullable=False),  # "" when the quantity has none
    Column("code", _TEXT, nullable=False),
    Column("unit", _TEXT, nullable=False),
    Column("value", Double, nullable=False),
)
Index("ix_fhir_search_quantity_value", *(fhir_search_quantity.c[n] for n in ("type", "param", "value", "code", "id")))
Index("ix_fhir_search_quantity_resource", *(fhir_search_quantity.c[n] for n in ("type", "id", "param")))

SEARCH_TABLES = {
    "token": fhir_search_token,
    "string": fhir_search_string,
    "date": fhir_search_date,
    "reference": fhir_search_reference,
    "quantity": fhir_search_quantity,
}

#: The target of a merged-away Patient (gateway/store/merges.py).
patient_merge = Table(
    "patient_merge",
    metadata,
    Column("old_id", String(64), primary_key=True),
    Column("new_id", String(64), nullable=False),
    # The archive id of the message that merged it.
    Column("message_id", String(64), nullable=True),
)


# -- the journal ---------------------------------------------------------------------------------
message_archive = Table(
    "message_archive",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("sender", String(512), nullable=False, default=""),
    Column("control_id", String(256), nullable=False, default=""),
    Column("seq", BigInteger, nullable=False, default=0),
    Column("message_type", String(64), nullable=False, default=""),
    Column("peer", String(256), nullable=False, default=""),
    Column("received_at", BigInteger, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    # received -> processed | failed (| ack: an incoming acknowledgement, kept for operators)
    Column("status", String(16), nullable=False, default="received"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated_at", BigInteger, nullable=False),
    Column("detail", Text, nullable=False, default=""),
    # What the conversion could not carry over (docs/mappings.md), one note per line.
    Column("notes", Text, nullable=False, default="", server_default=""),
)
Index("ix_message_archive_sender_control", message_archive.c.sender, message_archive.c.control_id)
Index("ix_message_archive_status", message_archive.c.status, message_archive.c.received_at)

sink_delivery = Table(
    "sink_delivery",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("sink", String(64), primary_key=True),
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    # Milliseconds since the epoch: when the gateway received the message (its age counts from
    # there), when the next attempt is due, when the row last changed.
    Column("received_at", BigInteger, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False, default=0),
    Column("updated_at", BigInteger, nullable=False),
)
Index("ix_sink_delivery_status", sink_delivery.c.sink, sink_delivery.c.status, sink_delivery.c.received_at)

resource_provenance = Table(
    "resource_provenance",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("superseded_by", String(64), nullable=True),
    Column("recorded_at", DateTime, nullable=False),
)
Index("ix_resource_provenance_resource", resource_provenance.c.type, resource_provenance.c.id)
# Operators list superseded writes, newest first; a partial index keeps the common rows out of it.
Index(
    "ix_resource_provenance_superseded",
    resource_provenance.c.recorded_at,
    sqlite_where=resource_provenance.c.outcome == "superseded",
    postgresql_where=resource_provenance.c.outcome == "superseded",
)

dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("envelope_id", String(64), nullable=False),
    Column("sender", String(512), nullable=False, default=""),
    Column("control_id", String(256), nullable=False, default=""),
    # parse, convert, ..., or deliver:<sink> (a sink's name is up to 64 characters)
    Column("stage", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("error_type", String(128), nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=1),
    Column("created_at", BigInteger, nullable=False),
    # open -> replayed | discarded
    Column("status", String(16), nullable=False, default="open"),
    Column("raw", LargeBinary, nullable=False),
    # The letter whose replay this failed attempt was ("" for a first attempt): a chain to follow.
    Column("replay_of", String(36), nullable=False, default="", server_default=""),
    # The envelope a replay put on the queue (status replayed).
    Column("replayed_as", String(64), nullable=False, default="", server_default=""),
    # Who replayed or discarded the letter, when (ms), and why / what was edited.
    Column("handled_by", String(128), nullable=False, default="", server_default=""),
    Column("handled_at", BigInteger, nullable=False, default=0, server_default="0"),
    Column("handled_note", Text, nullable=False, default="", server_default=""),
)
Index("ix_dead_letter_status_created", dead_letter.c.status, dead_letter.c.created_at)

#: An operator's bulk replay of dead letters, or reprocess of archived messages (issue 15): durable,
#: so a crash resumes it after ``cursor``; one worker at a time holds it (``lease_*``).
operator_job = Table(
    "operator_job",
    metadata,
    Column("id", String(36), primary_key=True),
    # replay | reprocess | import (a batch file's import: a record of it, run by hl7gw import)
    Column("kind", String(16), nullable=False),
    # The filter the job was made with (JSON: stage, sender, since, ...); for an import, the file
    # (JSON: file name, sha256, size).
    Column("filter", Text, nullable=False),
    # running -> done | cancelled; running <-> paused; an import: importing -> done | failed
    Column("status", String(16), nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # Messages queued, and those skipped (a letter replayed or discarded meanwhile).
    Column("done", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=False, default=0),
    # The last item handled, "<time>|<id>" in the order the job goes through them.
    Column("cursor", String(128), nullable=False, default=""),
    Column("lease_owner", String(64), nullable=False, default=""),
    Column("lease_until", BigInteger, nullable=False, default=0),
    Column("summary", Text, nullable=False, default=""),
)
Index("ix_operator_job_status", operator_job.c.status)

#: A FHIR Bulk Data $export (gateway/store/export_jobs.py, docs/consumers.md "Bulk export"): the
#: request, where the worker running it is (``state``: JSON, saved with the files' lengths after
#: each page, so a crash resumes there) and the files made; one worker at a time holds it (``lease_*``).
bulk_export = Table(
    "bulk_export",
    metadata,
    Column("id", String(36), primary_key=True),
    # accepted -> running -> done | failed; any -> cancelled (DELETE); done -> expired (files deleted)
    Column("status", String(16), nullable=False),
    # system | patient | group, and the Group's id for a group export
    Column("level", String(16), nullable=False),
    Column("group_id", String(64), nullable=False, default=""),
    # The kick-off request's URL, as the manifest's ``request`` repeats it.
    Column("request", Text, nullable=False),
    # JSON: the resource types to export, in order; the _since instant (naive UTC) or NULL.
    Column("types", Text, nullable=False),
    Column("since", DateTime, nullable=True),
    # The manifest's transactionTime (naive UTC, ms): the data is exported as it was then.
    Column("transaction_time", DateTime, nullable=False),
    # Who asked (the token's name and role): only they (or an admin) may poll, download, cancel.
    Column("created_by", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # When the files are deleted (ms since the epoch; 0 until the export is done).
    Column("expires_at", BigInteger, nullable=False, default=0),
    # JSON: the position (type, last id, open file and its length) and the files written.
    Column("state", Text, nullable=False),
    # JSON list of warnings (parameters ignored under handling=lenient) and failures, for error[].
    Column("notes", Text, nullable=False, default="[]"),
    Column("lease_owner", String(64), nullable=False, default=""),
    Column("lease_until", BigInteger, nullable=False, default=0),
)
Index("ix_bulk_export_status", bulk_export.c.status)
Index("ix_dead_letter_envelope", dead_letter.c.envelope_id)


# -- Subscriptions (docs/consumers.md, "Subscriptions") -----------------------------------------
#: R4 Subscription resources, kept apart from the FHIR store: their endpoint headers may hold
#: secrets, so they appear in no history feed, search or export of other types.
subscription = Table(
    "subscription",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    # Naive UTC, millisecond precision; meta.lastUpdated of the content.
    Column("last_updated", DateTime, nullable=False),
    # The resource as given (status and error are the columns below, kept by the gateway).
    Column("content", Text, nullable=False),
    # requested -> active -> error -> active ...; off (set by an operator)
    Column("status", String(16), nullable=False),
    # Why the status is error ("" otherwise): the endpoint's last failure, without its words.
    Column("error", Text, nullable=False, default=""),
    # The resource type of the criteria, for the dispatcher's feed filter.
    Column("resource_type", String(64), nullable=False),
    # api | config (HL7GW_SUBSCRIPTIONS_FILE)
    Column("origin", String(16), nullable=False),
    # Changes written at or after this instant (naive UTC) match; set when it became active.
    Column("active_since", DateTime, nullable=True),
    # The last event number given (events-since-subscription-start).
    Column("events", BigInteger, nullable=False, default=0),
    Column("updated_at", BigInteger, nullable=False),
)

#: The outbox: one row per matching change and subscription, with its gapless event number,
#: written in the transaction that advances the dispatcher's feed position.
subscription_event = Table(
    "subscription_event",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", BigInteger, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # When the change was written (naive UTC): the notification event's timestamp.
    Column("occurred_at", DateTime, nullable=False),
    # pending -> sent | dead (refused by the endpoint: a dead letter holds it)
    Column("status", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    # Milliseconds since the epoch.
    Column("next_attempt_at", BigInteger, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=False, default=0),
)
Index(
    "ix_subscription_event_status",
    subscription_event.c.subscription_id,
    subscription_event.c.status,
    subscription_event.c.event_number,
)

#: The dispatcher's place in the history feed and the lease of the one process that dispatches.
subscription_dispatch = Table(
    "subscription_dispatch",
    metadata,
    Column("name", String(32), primary_key=True),
    # The feed position after the last change dispatched; NULL before the first.
    Column("position", String(256), nullable=True),
    Column("lease_owner", String(64), nullable=False, default=""),
    Column("lease_until", BigInteger, nullable=False, default=0),
    Column("updated_at", BigInteger, nullable=False),
)


# -- the gateway's own ---------------------------------------------------------------------------
#: One row a worker writes to see whether the database takes writes (gateway/services/outages.py).
write_probe_table = Table(
    "write_probe",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", BigInteger, nullable=False),
)
