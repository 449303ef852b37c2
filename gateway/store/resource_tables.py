"""Tables of the built-in FHIR store: current resources, every version, and the search index."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text

from gateway.store.db import metadata

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
)
# Type history (GET [type]/_history) reads newest first within a type.
Index("ix_fhir_resource_history_updated", fhir_resource_history.c.type, fhir_resource_history.c.last_updated)

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

SEARCH_TABLES = {
    "token": fhir_search_token,
    "string": fhir_search_string,
    "date": fhir_search_date,
    "reference": fhir_search_reference,
}
