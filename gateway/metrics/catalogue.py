"""Every metric the gateway's processes record, by the names of docs/observability.md ("Metrics").

Importing this module imports ``prometheus_client``, which decides then, from
``PROMETHEUS_MULTIPROC_DIR``, whether values live in this process or in files shared by every
process of ``hl7gw run`` (gateway/metrics/exposition.py). What is read from Redis or the database
at scrape time is not here but in gateway/metrics/collector.py.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from gateway.metrics.value_files import reserve_value_files

# Before the first metric below makes its value file.
reserve_value_files()

# The ``_created`` series say when a label set was first seen in one process: noise, and in
# multiprocess mode not exported anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Seconds; a parse or validation takes a millisecond or so, a store commit tens of milliseconds.
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- the MLLP listener ---------------------------------------------------------------------------
MESSAGES_RECEIVED = Counter(
    "hl7gw_messages_received", "Messages accepted at intake (stored, acknowledged)", ["sender", "message_type"]
)
ACKS_SENT = Counter("hl7gw_acks_sent", "Acknowledgements sent, by MSA-1 code", ["code"])
DUPLICATES = Counter("hl7gw_duplicates", "Resent messages answered again but not queued again", ["sender"])
INTAKE_REJECTIONS = Counter(
    "hl7gw_intake_rejections",
    "Messages refused at intake (AR/AE), by the ERR code of their first error (HL7 table 0357)",
    ["err_code"],
)
MLLP_CONNECTIONS_OPEN = Gauge("hl7gw_mllp_connections_open", "MLLP connections open now", multiprocess_mode="livesum")
MLLP_CONNECTIONS_REFUSED = Counter(
    "hl7gw_mllp_connections_refused",
    "MLLP connections closed at once, by reason: max-connections, stopping, peer-limit, not-allowed",
    ["reason"],
)
MLLP_UNFINISHED_FRAMES = Counter(
    "hl7gw_mllp_unfinished_frames",
    "MLLP frames that never ended, by reason: cut-off (a new start block), closed (the connection), timeout",
    ["reason"],
)
QUEUE_VOLATILE = Gauge(
    "hl7gw_queue_volatile",
    "1 while the queue's Redis can lose acknowledged messages in a crash (appendonly no, or appendfsync not "
    "always): intake refuses every message then, unless HL7GW_ALLOW_VOLATILE_REDIS=true; else 0",
    multiprocess_mode="livemax",
)

# -- batch file imports (hl7gw import) -------------------------------------------------------------
IMPORT_MESSAGES = Counter(
    "hl7gw_import_messages",
    "Messages (and unreadable pieces) of imported batch files, by outcome: accepted, duplicate, "
    "rejected, ack-kept, not-stored",
    ["outcome"],
)
IMPORT_BATCHES_MISMATCHED = Counter(
    "hl7gw_import_batches_mismatched", "Imported batches whose BTS-1 differs from the messages read"
)
INBOX_FILES = Counter(
    "hl7gw_inbox_files",
    "Files of the watched inbox taken, by outcome: imported, already-imported (to done/), failed (to failed/)",
    ["outcome"],
)

# -- the workers ----------------------------------------------------------------------------------
MESSAGES_CONVERTED = Counter("hl7gw_messages_converted", "Messages converted to a FHIR Bundle", ["message_type"])
DEAD_LETTERS = Counter("hl7gw_dead_letters", "Dead letters written, by stage and error type", ["stage", "error_type"])
MESSAGES_REPLAYED = Counter(
    "hl7gw_messages_replayed", "Messages queued again by operators (replay of a dead letter, reprocess)", ["kind"]
)
STAGE_DURATION = Histogram(
    "hl7gw_stage_duration_seconds", "Time a message spends in one pipeline stage", ["stage"], buckets=_STAGE_BUCKETS
)
ACK_TO_STORED = Histogram(
    "hl7gw_ack_to_stored_seconds",
    "From receipt (the ACK follows at once) to stored in the built-in store, for live messages",
    buckets=_LATENCY_BUCKETS,
)

# -- remote sinks ---------------------------------------------------------------------------------
SINK_DELIVERIES = Counter("hl7gw_sink_deliveries", "Deliveries to remote FHIR sinks, by outcome", ["sink", "outcome"])
SINK_REQUEST_DURATION = Histogram(
    "hl7gw_sink_request_duration_seconds",
    "Duration of requests to a remote FHIR sink, failed ones too",
    ["sink"],
    buckets=_REQUEST_BUCKETS,
)

# -- subscriptions ---------------------------------------------------------------------------------
SUBSCRIPTION_NOTIFICATIONS = Counter(
    "hl7gw_subscription_events",
    "Notification events sent to Subscription endpoints, by subscription id and outcome "
    "(sent, retried, refused: a dead letter)",
    ["subscription", "outcome"],
)

# -- the API --------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "hl7gw_http_requests", "API requests, by route template, method and status", ["route", "method", "status"]
)
HTTP_REQUEST_DURATION = Histogram(
    "hl7gw_http_request_duration_seconds",
    "API request duration, by route template and method",
    ["route", "method"],
    buckets=_REQUEST_BUCKETS,
)

# -- the access audit trail (fed by its writer) -----------------------------------------------------
AUDIT_EVENTS_PENDING = Gauge(
    "hl7gw_audit_events_pending", "Access audit events waiting to be written", multiprocess_mode="livesum"
)
AUDIT_EVENTS_WRITTEN = Counter("hl7gw_audit_events_written", "Access audit events written")
AUDIT_EVENTS_DROPPED = Counter("hl7gw_audit_events_dropped", "Access audit events lost (queue full, write failed)")
