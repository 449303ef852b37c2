"""The one typed settings object, read once from ``HL7GW_*`` environment variables; the components
read it by sections (gateway/config/sections.py)."""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.config.sections import (
    ApiSettings,
    AuditSettings,
    ConversionSettings,
    ExportSettings,
    InboxSettings,
    IntakeSettings,
    LoggingSettings,
    MetricsSettings,
    MllpSettings,
    OidcSettings,
    SinkSettings,
    StorageSettings,
    SubscriptionSettings,
    WorkerSettings,
)
from gateway.config.values import (
    UNPLACED_POLICIES,
    _zone,
    check_authorization_url,
    host_zone,
    parse_algorithms,
    parse_networks,
    parse_origins,
    parse_role_scopes,
    parse_sender_policies,
    parse_sender_seconds,
    parse_sender_zones,
    parse_tokens,
)
from gateway.errors import ConfigError
from gateway.sinkspec import parse_sinks


def _cores(limit: int) -> int:
    """The CPUs this process may run on, at most ``limit``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, limit))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HL7GW_", extra="ignore", frozen=True)

    data_dir: Path = Path("./data")
    redis_url: str | None = None
    database_url: str | None = None
    #: Prefix of every Redis key, so that several gateways (or test runs) can share one Redis.
    redis_namespace: str = Field(default="hl7gw", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Accept messages on a Redis that can lose acknowledged ones in a crash (appendonly no, or
    # appendfsync not always; gateway/queue/durability.py): the operator knows, and is warned.
    allow_volatile_redis: bool = False

    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)

    # "name:token:role,..." (or "token:role", named by a digest); roles reader < operator < admin.
    api_tokens: str | None = None
    # /docs and /openapi.json without a token (they describe the API, not its data).
    public_docs: bool = False
    # Origins a browser app may call the API from (CORS): "https://app.example.org,http://localhost:3000",
    # or "*" for any. Unset: no CORS headers, so browsers keep pages of other origins out.
    cors_origins: str | None = None
    # How long each check of GET /health/ready and ``hl7gw status`` may take before it counts as failed.
    health_check_timeout_s: float = Field(default=1.0, gt=0, le=60)

    # Bearer JWTs of an external OAuth 2.0 / OpenID Connect authorization server (docs/security.md),
    # accepted besides the static tokens: its issuer URL (discovery at {issuer}/.well-known/
    # openid-configuration), a JWKS URL overriding the discovery's jwks_uri, the audience tokens
    # must name (default: HL7GW_PUBLIC_BASE_URL + /fhir), the signature algorithms allowed, the clock
    # skew allowed, how long keys are cached, the least time between two fetches an unknown key id or a
    # failure may cause, the time limit per request to the server, and the scopes that give a role.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str | None = None
    oidc_algorithms: str = "RS256,ES256"
    oidc_leeway_s: float = Field(default=30.0, ge=0, le=300)
    oidc_jwks_cache_s: float = Field(default=300.0, ge=0, le=86_400)
    oidc_jwks_refetch_s: float = Field(default=30.0, ge=0, le=3_600)
    oidc_timeout_s: float = Field(default=5.0, gt=0, le=60)
    oidc_role_scopes: str = "hl7gw/admin=admin,hl7gw/operator=operator,hl7gw/reader=reader,hl7gw/metrics=metrics"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # text: one readable line per record; json: one JSON object per line, for a log pipeline
    # (docs/observability.md, Logs). Both carry the message's envelope id, sender and control id.
    log_format: Literal["text", "json"] = "text"

    # The access audit trail (docs/observability.md): every read and search of patient data through
    # the FHIR API becomes an AuditEvent (on|off; failed authentications are recorded either way).
    access_audit: bool = True
    # AuditEvents are deleted this many days after they were recorded; 0 keeps them for ever. Six
    # years by default: HIPAA's retention for security documentation (45 CFR 164.316(b)(2)).
    audit_retention_days: int = Field(default=6 * 365, ge=0, le=100 * 365)

    # Worker tuning. A worker process converts on one core (the GIL), so by default there is one
    # per core, at most 4 (more only help with PostgreSQL on a bigger machine). Its threads mostly
    # wait for their message's group commit: the more wait, the more messages share one database
    # transaction and its fixed costs (the write lock, reading what is stored, the fsync). On 2 cores
    # (docs/delivery.md) 64 threads per process gave 184 msg/s on SQLite where 16 gave 130.
    worker_processes: int = Field(default_factory=lambda: _cores(limit=4), ge=1, le=64)
    worker_threads: int = Field(default=64, ge=1, le=256)
    # A failure that may pass (gateway/errors.py Policy.RETRY) is tried again this many times, then
    # becomes a dead letter. Outages of the database or Redis never count: a worker waits them out,
    # probing with backoff up to outage_max_backoff_s (gateway/services/outages.py).
    max_retries: int = Field(default=5, ge=0, le=100)
    outage_max_backoff_s: float = Field(default=10.0, ge=0.5, le=600)
    # Milliseconds without a heartbeat after which a worker's in-flight messages are requeued.
    heartbeat_timeout_ms: int = Field(default=15_000, ge=1_000)
    # Replay and reprocess jobs (gateway/services/jobs.py) queue at most this many messages a
    # second, on a queue of their own, so live MLLP traffic keeps its latency.
    replay_rate: float = Field(default=50.0, gt=0, le=100_000)
    # Imported batch files (docs/batch.md, Order and fairness) are worked through from a queue of
    # their own: at most this many messages a second for the whole gateway (every worker process
    # shares one pace, kept in Redis), and none started while live messages wait for a worker.
    import_rate: float = Field(default=100.0, gt=0, le=100_000)
    # Threads per worker process for the import queue (the live queue has HL7GW_WORKER_THREADS).
    # Each waits for the store's group commit like a live one, so they bound the drain rate too:
    # on 2 cores, 2 processes x 4 threads stored ~90 msg/s whatever the rate, x 8 reached 100/s.
    import_threads: int = Field(default=8, ge=1, le=64)
    # Megabytes of large messages (1 MB or more: scanned reports, images) a worker process works on
    # at once; more wait for room, one larger than this runs alone. A message costs about ten times
    # its size while it is worked on (docs/operations.md, Memory: sizing a worker): 32 MB lets two
    # 15 MB messages run together, ~300 MB above the worker's ~175 MB at rest.
    worker_large_messages_mb: int = Field(default=32, ge=1, le=65536)

    # The watched inbox (docs/batch.md, The watched inbox): batch files put in this directory are
    # imported by a process of ``hl7gw run``, then moved to done/ or failed/ with a report beside
    # them. Unset: no inbox. A file not renamed in from a temporary name is imported once its size
    # and modification time have not changed for inbox_settle_s; the directory is looked at every
    # inbox_poll_s.
    inbox_dir: Path | None = None
    inbox_settle_s: float = Field(default=10.0, ge=0, le=86_400)
    inbox_poll_s: float = Field(default=1.0, gt=0, le=600)
    # Largest body POST /hl7/batch takes (as sent: gzip counts compressed); larger ones get 413.
    batch_max_upload_bytes: int = Field(default=1 << 30, ge=1024)

    # FHIR Bulk Data $export (docs/consumers.md, "Bulk export"): files under export_dir (default
    # <data dir>/export), one directory per export, kept export_retention_hours after it finishes;
    # at most export_file_resources resources per file; the store read export_page_size at a time;
    # an export whose worker stops saving progress for export_lease_s is taken over by another.
    export_dir: Path | None = None
    export_retention_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    export_file_resources: int = Field(default=100_000, ge=1, le=10_000_000)
    export_page_size: int = Field(default=2_000, ge=1, le=50_000)
    export_lease_s: float = Field(default=60.0, ge=1, le=3_600)

    # Intake: how many messages one Redis commit may carry, and how long a flush may wait.
    commit_batch_max: int = Field(default=256, ge=1, le=10_000)
    commit_timeout_s: float = Field(default=5.0, gt=0)

    # MLLP receiver (docs/mllp.md).
    mllp_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    mllp_frame_timeout_s: float = Field(default=30.0, gt=0)
    mllp_idle_timeout_s: float = Field(default=3600.0, ge=0)  # 0: never close an idle connection
    mllp_max_connections: int = Field(default=500, ge=1)
    # One source address may hold this many at once (an interface engine opens one per route).
    mllp_max_connections_per_peer: int = Field(default=50, ge=1)
    # CIDRs (IPv4, IPv6) that may connect, comma-separated; unset: every address.
    mllp_allowed_peers: str | None = None
    mllp_require_trailing_cr: bool = False
    mllp_commit_acks: bool = False  # MLLP release 2 commit acknowledgements
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None  # set: mutual TLS, clients without a certificate are refused
    dedup_window_s: int = Field(default=7 * 86_400, ge=0)  # 0: no duplicate detection
    accepted_processing_ids: str = Field(default="P,T,D", pattern=r"^[A-Za-z]{1,3}(,[A-Za-z]{1,3})*$")
    accepted_versions: str = Field(
        default="2.1,2.2,2.3,2.3.1,2.4,2.5,2.5.1,2.6,2.7,2.7.1,2.8,2.8.1,2.8.2",
        pattern=r"^\d+\.\d+(\.\d+)?(,\d+\.\d+(\.\d+)?)*$",
    )
    unsupported_types: Literal["reject", "accept"] = "reject"
    # standard: MSH-15/16 choose original or enhanced mode (chapter 2.9); original: always AA/AE/AR.
    ack_mode: Literal["standard", "original"] = "standard"

    # Remote FHIR servers every message is also delivered to (gateway/sinkspec.py, docs/delivery.md).
    fhir_sinks: str | None = None
    # A message not delivered to a sink after this long becomes a dead letter (below 7 days:
    # retries wait in the queue's delay set).
    sink_max_age_s: float = Field(default=3 * 86_400, gt=0, lt=7 * 86_400)
    # Retries: exponential backoff with full jitter up to this many seconds (a Retry-After may say more).
    sink_max_backoff_s: float = Field(default=300.0, ge=1)
    # Circuit breaker per sink: open after this many failures in a row; stay open this long at first.
    sink_breaker_failures: int = Field(default=5, ge=1)
    sink_breaker_cooldown_s: float = Field(default=10.0, gt=0)

    # Subscriptions (docs/consumers.md, "Subscriptions"): a file of Subscription resources loaded
    # at start (YAML or JSON); the base URL notifications name resources by (default: the API's
    # own address); how often the dispatcher looks for new changes; at most this many events in
    # one notification (while a backlog is sent); the endpoint's time limit per request. Retries,
    # backoff and the circuit breaker use the HL7GW_SINK_* settings.
    subscriptions_file: Path | None = None
    public_base_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    subscription_poll_s: float = Field(default=0.05, gt=0, le=60)
    subscription_batch_max: int = Field(default=50, ge=1, le=1000)
    subscription_timeout_s: float = Field(default=10.0, gt=0, le=300)

    # Conversion (docs/mappings.md): a site's mapping overlay (and per-sender maps in its senders/),
    # and the IANA time zone of v2 timestamps without an offset, for all senders and per sender
    # ("APP|FACILITY=Zone,APP|FACILITY=Zone", MSH-3.1|MSH-4.1).
    mappings_dir: Path | None = None
    default_tz: str | None = None
    sender_tz: str | None = None
    # A segment that fits nowhere in the message's structure: reject the message (a dead letter
    # naming the segments) or convert it without them, with a note on the Provenance; per sender
    # as "APP|FACILITY=note,APP|FACILITY=reject".
    unplaced_segments: Literal["reject", "note"] = "reject"
    sender_unplaced_segments: str | None = None

    # Prometheus metrics (docs/observability.md): on or off (off: every instrument is a no-op);
    # the port on which ``hl7gw mllp`` or ``hl7gw worker`` run alone serve theirs (unset: none;
    # under ``hl7gw run`` the API's /metrics reports every process); the longest expected silence
    # of a sender, for all and per sender ("APP|FACILITY=seconds,..."), for the alert.
    metrics: bool = True
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    sender_silence_s: float = Field(default=3600.0, gt=0)
    sender_silence: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("default_tz")
    @classmethod
    def _check_default_tz(cls, value: str | None) -> str | None:
        if value:
            _zone(value)
        return value or None

    @field_validator("sender_tz")
    @classmethod
    def _check_sender_tz(cls, value: str | None) -> str | None:
        if value:
            parse_sender_zones(value)
        return value or None

    @field_validator("sender_unplaced_segments")
    @classmethod
    def _check_sender_unplaced(cls, value: str | None) -> str | None:
        if value:
            parse_sender_policies(value, UNPLACED_POLICIES)
        return value or None

    @field_validator("sender_silence")
    @classmethod
    def _check_sender_silence(cls, value: str | None) -> str | None:
        if value:
            parse_sender_seconds(value)
        return value or None

    @field_validator("api_tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        if value:
            parse_tokens(value)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str | None) -> str | None:
        if value:
            parse_origins(value)
        return value or None

    @field_validator("oidc_issuer", "oidc_jwks_url")
    @classmethod
    def _check_oidc_url(cls, value: str | None) -> str | None:
        return check_authorization_url(value.strip()) if value and value.strip() else None

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_algorithms(cls, value: str) -> str:
        return ",".join(parse_algorithms(value))

    @field_validator("oidc_role_scopes")
    @classmethod
    def _check_role_scopes(cls, value: str) -> str:
        parse_role_scopes(value)
        return value

    @model_validator(mode="after")
    def _check_oidc_audience(self) -> Settings:
        if self.oidc_issuer and not (self.oidc_audience or self.public_base_url):
            raise ValueError(
                "HL7GW_OIDC_ISSUER needs HL7GW_OIDC_AUDIENCE (the FHIR base URL in its tokens) or HL7GW_PUBLIC_BASE_URL"
            )
        if (self.oidc_jwks_url or self.oidc_audience) and not self.oidc_issuer:
            raise ValueError("HL7GW_OIDC_JWKS_URL and HL7GW_OIDC_AUDIENCE need HL7GW_OIDC_ISSUER")
        return self

    @field_validator("fhir_sinks")
    @classmethod
    def _check_sinks(cls, value: str | None) -> str | None:
        if value:
            parse_sinks(value)
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("accepted_processing_ids", "accepted_versions", mode="before")
    @classmethod
    def _strip_list(cls, value: object) -> object:
        return ",".join(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @field_validator("mllp_allowed_peers")
    @classmethod
    def _check_allowed_peers(cls, value: str | None) -> str | None:
        if value and not parse_networks(value):
            raise ValueError("names no address; leave it unset to let every address connect")
        return value or None

    @field_validator("mllp_tls_key", "mllp_tls_client_ca")
    @classmethod
    def _check_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("mllp_tls_cert") is None:
            raise ValueError("needs HL7GW_MLLP_TLS_CERT too")
        return value

    # -- the sections, made once per Settings ----------------------------------------------------
    @functools.cached_property
    def storage(self) -> StorageSettings:
        database = self.database_url or f"sqlite:///{(self.data_dir / 'hl7gw.sqlite3').resolve()}"
        return StorageSettings(self.data_dir, self.redis_url, self.redis_namespace, database, self.allow_volatile_redis)

    @functools.cached_property
    def mllp(self) -> MllpSettings:
        return MllpSettings(
            host=self.mllp_host,
            port=self.mllp_port,
            max_message_bytes=self.mllp_max_message_bytes,
            frame_timeout_s=self.mllp_frame_timeout_s,
            idle_timeout_s=self.mllp_idle_timeout_s,
            max_connections=self.mllp_max_connections,
            max_connections_per_peer=self.mllp_max_connections_per_peer,
            allowed_peers=parse_networks(self.mllp_allowed_peers or ""),
            require_trailing_cr=self.mllp_require_trailing_cr,
            commit_acks=self.mllp_commit_acks,
            tls_cert=self.mllp_tls_cert,
            tls_key=self.mllp_tls_key,
            tls_client_ca=self.mllp_tls_client_ca,
        )

    @functools.cached_property
    def intake(self) -> IntakeSettings:
        return IntakeSettings(
            batch_max=self.commit_batch_max,
            commit_timeout_s=self.commit_timeout_s,
            dedup_window_s=self.dedup_window_s,
            processing_ids=frozenset(self.accepted_processing_ids.upper().split(",")),
            versions=frozenset(self.accepted_versions.split(",")),
            reject_unsupported=self.unsupported_types == "reject",
            honour_enhanced_mode=self.ack_mode == "standard",
        )

    @functools.cached_property
    def conversion(self) -> ConversionSettings:
        zones = parse_sender_zones(self.sender_tz) if self.sender_tz else {}
        unplaced = self.sender_unplaced_segments
        return ConversionSettings(
            self.mappings_dir,
            self.default_tz,
            zones,
            self.unplaced_segments,
            parse_sender_policies(unplaced, UNPLACED_POLICIES) if unplaced else {},
            host_zone(os.environ),
        )

    @functools.cached_property
    def worker(self) -> WorkerSettings:
        return WorkerSettings(
            processes=self.worker_processes,
            threads=self.worker_threads,
            max_retries=self.max_retries,
            outage_max_backoff_s=self.outage_max_backoff_s,
            heartbeat_timeout_ms=self.heartbeat_timeout_ms,
            replay_rate=self.replay_rate,
            import_rate=self.import_rate,
            import_threads=self.import_threads,
            large_messages_bytes=self.worker_large_messages_mb << 20,
        )

    @functools.cached_property
    def sinks(self) -> SinkSettings:
        return SinkSettings(
            specs=parse_sinks(self.fhir_sinks) if self.fhir_sinks else (),
            max_age_s=self.sink_max_age_s,
            max_backoff_s=self.sink_max_backoff_s,
            breaker_failures=self.sink_breaker_failures,
            breaker_cooldown_s=self.sink_breaker_cooldown_s,
        )

    @functools.cached_property
    def subscriptions(self) -> SubscriptionSettings:
        base = (self.public_base_url or f"http://{_client_host(self.http_host)}:{self.http_port}").rstrip("/")
        return SubscriptionSettings(
            file=self.subscriptions_file,
            base_url=f"{base}/fhir",
            poll_s=self.subscription_poll_s,
            batch_max=self.subscription_batch_max,
            timeout_s=self.subscription_timeout_s,
            max_backoff_s=self.sink_max_backoff_s,
            breaker_failures=self.sink_breaker_failures,
            breaker_cooldown_s=self.sink_breaker_cooldown_s,
        )

    @functools.cached_property
    def api(self) -> ApiSettings:
        return ApiSettings(
            self.http_host,
            self.http_port,
            self.api_tokens,
            self.public_docs,
            self.health_check_timeout_s,
            parse_origins(self.cors_origins) if self.cors_origins else (),
        )

    @functools.cached_property
    def oidc(self) -> OidcSettings | None:
        """The authorization server whose JWTs are accepted; None when HL7GW_OIDC_ISSUER is unset."""
        if not self.oidc_issuer:
            return None
        return OidcSettings(
            issuer=self.oidc_issuer,
            jwks_url=self.oidc_jwks_url,
            audience=self.oidc_audience or f"{(self.public_base_url or '').rstrip('/')}/fhir",
            algorithms=parse_algorithms(self.oidc_algorithms),
            leeway_s=self.oidc_leeway_s,
            cache_s=self.oidc_jwks_cache_s,
            refetch_s=self.oidc_jwks_refetch_s,
            timeout_s=self.oidc_timeout_s,
            role_scopes=parse_role_scopes(self.oidc_role_scopes),
        )

    @functools.cached_property
    def prometheus(self) -> MetricsSettings:
        silence = parse_sender_seconds(self.sender_silence) if self.sender_silence else {}
        return MetricsSettings(self.metrics, self.metrics_port, self.sender_silence_s, silence)

    @functools.cached_property
    def audit(self) -> AuditSettings:
        return AuditSettings(self.access_audit, self.audit_retention_days)

    @functools.cached_property
    def inbox(self) -> InboxSettings:
        return InboxSettings(self.inbox_dir, self.inbox_settle_s, self.inbox_poll_s, self.batch_max_upload_bytes)

    @functools.cached_property
    def export(self) -> ExportSettings:
        return ExportSettings(
            directory=self.export_dir or self.data_dir / "export",
            retention_s=self.export_retention_hours * 3600,
            file_resources=self.export_file_resources,
            page_size=self.export_page_size,
            lease_s=self.export_lease_s,
        )

    @functools.cached_property
    def logging(self) -> LoggingSettings:
        return LoggingSettings(self.log_level, self.log_format)


def _client_host(host: str) -> str:
    """The address a client uses for a server listening on ``host`` (a wildcard is this machine)."""
    return "localhost" if host in ("0.0.0.0", "::", "") else host


#: HL7GW_* variables that are not settings but are read elsewhere: the test suite's database, and
#: what ``hl7gw run`` hands its children.
OTHER_VARIABLES = frozenset(
    {"HL7GW_TEST_DATABASE_URL", "HL7GW_READY_FD", "HL7GW_PROCESS_NAME", "HL7GW_SUPERVISOR_FD", "HL7GW_CONSUMER_PREFIX"}
)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """HL7GW_* variables no setting reads, each with the closest known name (None: nothing close)."""
    known = {f"HL7GW_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    unknown = sorted(name for name in environ if name.upper().startswith("HL7GW_") and name.upper() not in known)
    return [(name, next(iter(difflib.get_close_matches(name.upper(), known, n=1)), None)) for name in unknown]


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "HL7GW_" + "_".join(str(part) for part in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']}" if err["loc"] else err["msg"])  # a check across settings
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
