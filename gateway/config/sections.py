"""The settings in sections, one per part of the gateway, made once from the ``HL7GW_*`` variables
(gateway/config/settings.py). A component takes the section it needs, or single values from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.values import Network, Role
from gateway.sinkspec import SinkSpec


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Where everything is kept: the data dir, Redis, the database."""

    data_dir: Path
    #: None: the embedded Redis that ``hl7gw run`` starts in the data dir.
    redis_url: str | None
    #: Prefix of every Redis key, so that several gateways (or test runs) can share one Redis.
    redis_namespace: str
    #: The configured database, or the SQLite file in the data dir.
    database_url: str
    #: Accept messages on a Redis that may lose acknowledged ones (gateway/queue/durability.py).
    allow_volatile_redis: bool = False

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"


@dataclass(frozen=True, slots=True)
class MllpSettings:
    """The MLLP listener (docs/mllp.md)."""

    host: str
    port: int
    max_message_bytes: int
    frame_timeout_s: float
    #: 0: never close an idle connection.
    idle_timeout_s: float
    max_connections: int
    #: Connections one source address may hold open at once.
    max_connections_per_peer: int
    #: Source addresses that may connect; empty: every address.
    allowed_peers: tuple[Network, ...]
    require_trailing_cr: bool
    #: MLLP release 2 commit acknowledgements.
    commit_acks: bool
    tls_cert: Path | None
    tls_key: Path | None
    #: Set: mutual TLS, clients without a certificate it signed are refused.
    tls_client_ca: Path | None


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    """What the listener accepts and how it commits it to the queue."""

    #: Most messages per Redis commit, and the longest wait for its reply.
    batch_max: int
    commit_timeout_s: float
    #: 0: no duplicate detection.
    dedup_window_s: int
    #: MSH-11.1 values accepted (table 0103).
    processing_ids: frozenset[str]
    #: MSH-12.1 values accepted.
    versions: frozenset[str]
    #: Message types without a mapping: refused (AR 200/201), or accepted to become dead letters.
    reject_unsupported: bool
    #: MSH-15/16 choose original or enhanced mode (chapter 2.9); False: always AA/AE/AR.
    honour_enhanced_mode: bool


@dataclass(frozen=True, slots=True)
class ConversionSettings:
    """The mappings (docs/mappings.md)."""

    #: A site's mapping overlay (and per-sender maps in its senders/).
    mappings_dir: Path | None
    #: IANA time zone of v2 timestamps without an offset, for all senders and per sender.
    default_tz: str | None
    sender_tz: Mapping[str, str]
    #: A segment that fits nowhere in the message's structure: "reject" (dead letter) or "note"
    #: (converted without it, said on the Provenance), for all senders and per sender.
    unplaced_segments: str = "reject"
    sender_unplaced_segments: Mapping[str, str] = field(default_factory=dict)
    #: This machine's zone (IANA name), for timestamps without an offset when neither the
    #: settings nor the message's MSH-7 give one; None when it cannot be told.
    host_tz: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The queue workers (docs/delivery.md)."""

    processes: int
    #: Threads per process: how many messages can share one database commit.
    threads: int
    #: Attempts after the first of a failure that may pass (errors.Policy.RETRY); outages never count.
    max_retries: int
    #: Longest wait between probes of a database or Redis that does not answer.
    outage_max_backoff_s: float
    #: Silence after which a worker's in-flight messages go back on the queue.
    heartbeat_timeout_ms: int
    #: Messages per second an operator's replay or reprocess job puts on its queue (live traffic first).
    replay_rate: float = 50.0
    #: Messages per second the workers of a gateway together take from the import queue, while no
    #: live message waits for a worker (gateway/queue/pacing.py).
    import_rate: float = 100.0
    #: Threads of the import queue per worker process.
    import_threads: int = 8
    #: Bytes of large messages (1 MB or more) a worker process works on at once (gateway/services/large_messages.py).
    large_messages_bytes: int = 32 << 20


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """Remote FHIR servers every message is also delivered to (gateway/sinkspec.py, docs/delivery.md)."""

    specs: tuple[SinkSpec, ...]
    #: A message not delivered to a sink after this long becomes a dead letter.
    max_age_s: float
    #: Exponential backoff with full jitter up to this long (a Retry-After may ask for more).
    max_backoff_s: float
    #: A sink's circuit breaker opens after this many failures in a row, first for this long.
    breaker_failures: int
    breaker_cooldown_s: float


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """Subscriptions (docs/consumers.md, "Subscriptions"): where they are configured, how
    notifications are made and sent."""

    #: Subscription resources loaded at start (YAML or JSON); None: only those of the API.
    file: Path | None
    #: The FHIR base URL notifications name resources by (``.../fhir``).
    base_url: str
    #: How often the dispatcher looks for changes when it found none.
    poll_s: float
    #: At most this many events in one notification (a backlog goes out in fewer requests).
    batch_max: int
    #: The endpoint's time limit per request.
    timeout_s: float
    #: Backoff ceiling and circuit breaker, as for remote sinks.
    max_backoff_s: float
    breaker_failures: int
    breaker_cooldown_s: float


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The FHIR REST API."""

    host: str
    port: int
    #: "name:token:role,..." (gateway/config/values.py parse_tokens); None: the admin token file.
    tokens: str | None
    #: /docs, /redoc and /openapi.json without a token.
    public_docs: bool
    #: Longest wait for each readiness check (gateway/readiness.py).
    health_check_timeout_s: float = 1.0
    #: Origins browsers may call the API from (CORS, gateway/api/cors.py); ("*",) any; () none.
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """The access audit trail (gateway/store/audit_trail.py)."""

    #: Record every read and search of patient data through the FHIR API as an AuditEvent.
    access: bool
    #: AuditEvents older than this many days are deleted; 0 keeps them for ever.
    retention_days: int


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    #: "text" or "json" (gateway/logs.py).
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus metrics (docs/observability.md, "Metrics")."""

    #: False: every instrument is a no-op (benchmarks compare the two).
    enabled: bool
    #: ``hl7gw mllp`` and ``hl7gw worker`` run alone serve their own /metrics here; None: not at all.
    port: int | None
    #: Longest expected gap between two messages of a sender, for all senders and per sender
    #: ("APP|FACILITY"), exported for the "sender silent" alert.
    silence_s: float
    sender_silence_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboxSettings:
    """The ways a batch file comes in besides ``hl7gw import`` (docs/batch.md)."""

    #: The watched inbox (HL7GW_INBOX_DIR); None: no inbox process.
    directory: Path | None
    #: A file not renamed in is imported once its size and time are unchanged this long.
    settle_s: float
    #: How often the inbox is looked at.
    poll_s: float
    #: Largest POST /hl7/batch body (bytes as sent, compressed or not).
    max_upload_bytes: int


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """FHIR Bulk Data $export (docs/consumers.md, "Bulk export")."""

    #: Where each export's NDJSON files go, in a directory named by the job's id.
    directory: Path
    #: How long a finished export's files are kept (and served), from its completion.
    retention_s: float
    #: Resources per NDJSON file; a type with more is split over several files.
    file_resources: int
    #: Resources read from the store per page (one keyset query each).
    page_size: int
    #: A worker that stops saving progress for this long loses the export to another worker.
    lease_s: float


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """An external OAuth 2.0 authorization server whose bearer JWTs the API accepts (docs/security.md)."""

    #: The ``iss`` of its tokens; its discovery document is ``{issuer}/.well-known/openid-configuration``.
    issuer: str
    #: The JWKS to check signatures with; None: the discovery document's ``jwks_uri``.
    jwks_url: str | None
    #: The ``aud`` a token must name (the FHIR base URL by default).
    audience: str
    #: Signature algorithms accepted (asymmetric only: never ``none`` or HS*).
    algorithms: tuple[str, ...]
    #: Clock skew allowed for ``exp``, ``nbf`` and ``iat``.
    leeway_s: float
    #: How long fetched keys and the discovery document are used before they are fetched again.
    cache_s: float
    #: Least time between two fetches that a token with an unknown ``kid`` (or a failed fetch) may cause.
    refetch_s: float
    #: Time limit of each request to the authorization server.
    timeout_s: float
    #: Scope -> gateway role: a token holding the scope has the role as a static token would.
    role_scopes: Mapping[str, Role]
