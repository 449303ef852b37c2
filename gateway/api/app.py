"""Build the FastAPI application: FHIR REST under /fhir, health, errors as OperationOutcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from gateway.api import (
    admin,
    admin_actions,
    bulk_export,
    everything,
    fhir,
    health,
    hl7_batch,
    metrics,
    smart_configuration,
    subscriptions,
)
from gateway.api.access_audit import AuthFailureAudit
from gateway.api.admin import DryRun
from gateway.api.admin_actions import Desk
from gateway.api.auth import TokenRegistry, ensure_admin_token
from gateway.api.authorization_server import AuthorizationServer
from gateway.api.bearer_jwt import JwtVerifier
from gateway.api.capability import software_version
from gateway.api.console import Workbench, install_console
from gateway.api.cors import install_cors
from gateway.api.docs import install_docs
from gateway.api.head import HeadAsGet
from gateway.api.hl7_batch import BatchUploads
from gateway.api.outcome import install_error_handlers
from gateway.config import Settings
from gateway.db.engine import make_engine
from gateway.db.migrate import migrate
from gateway.metrics import recorder
from gateway.metrics.collector import GatewayCollector, sources_from
from gateway.metrics.exposition import registry
from gateway.readiness import ReadinessProbe
from gateway.store.audit_relay import AuditRelay
from gateway.store.resources import ResourceStore
from gateway.store.subscriptions import SubscriptionStore


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    dry_run: DryRun | None = None,
    desk: Desk | None = None,
    batch_uploads: BatchUploads | None = None,
    test_message: Workbench | None = None,
) -> FastAPI:
    """The API app. Without ``engine``, opens ``settings.storage.database_url`` and creates the schema.
    ``dry_run`` converts a dead letter's message with the current mappings for /admin (the process
    that runs the API gives it: the api may not import the converter); without it there is none.
    ``batch_uploads`` imports what POST /hl7/batch receives (without it the route answers 503).
    ``test_message`` converts a message pasted into the console's test page, storing nothing."""
    owns_engine = engine is None
    if engine is None:
        engine = make_engine(settings.storage.database_url)
        migrate(engine)
    ensure_admin_token(settings)
    tokens = TokenRegistry.from_settings(settings)
    oidc = settings.oidc
    authorization_server = AuthorizationServer(oidc) if oidc is not None else None
    readiness = ReadinessProbe(
        settings.storage.redis_url,
        settings.storage.redis_namespace,
        engine,
        settings.worker.heartbeat_timeout_ms,
        settings.api.health_check_timeout_s,
        data_dir=settings.storage.data_dir,
        allow_volatile_redis=settings.storage.allow_volatile_redis,
    )

    store = ResourceStore(engine)
    # The access audit trail: reads, searches and refused requests, written by a process of its own.
    trail = AuditRelay(
        engine.url.render_as_string(hide_password=False),
        retention_days=settings.audit.retention_days,
        log_level=settings.logging.level,
        log_format=settings.logging.format,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        trail.start()
        try:
            yield
        finally:
            trail.close()  # drain what is queued before the engine goes
            readiness.close()
            if authorization_server is not None:
                authorization_server.close()
            if owns_engine:
                engine.dispose()

    app = FastAPI(
        title="hl7gw",
        version=software_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.store = store
    #: Subscription resources (/fhir/Subscription, operators and admins).
    app.state.subscriptions = SubscriptionStore(engine)
    app.state.audit_trail = trail
    #: Record reads and searches (HL7GW_ACCESS_AUDIT); benchmarks/audit.py flips it in a running server.
    app.state.access_audit = settings.audit.access
    app.state.tokens = tokens
    #: HL7GW_OIDC_ISSUER's discovery document and keys, and the check of its JWTs; None when unset.
    app.state.authorization_server = authorization_server
    app.state.jwt_verifier = JwtVerifier(oidc, authorization_server) if oidc and authorization_server else None
    app.state.dry_run = dry_run
    #: GET /health/ready's checks (gateway/readiness.py).
    app.state.readiness = readiness
    #: The operator actions (replay, discard, jobs) for /admin; given by the process running the API.
    app.state.desk = desk
    #: The import behind POST /hl7/batch; given by the process running the API.
    app.state.batch_uploads = batch_uploads
    collector = GatewayCollector(sources_from(settings, engine, software_version()))
    app.state.metrics_registry = registry([collector])
    #: The same scrape-time figures for the console's dashboard.
    app.state.gateway_collector = collector
    app.add_middleware(metrics.RequestMetrics, recorder=recorder())
    install_error_handlers(app)
    app.add_middleware(AuthFailureAudit, trail=trail)
    app.add_middleware(HeadAsGet)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(subscriptions.router)  # before fhir's /{resource_type} routes
    app.include_router(bulk_export.router)  # before fhir: /fhir/$export is not a search
    app.include_router(everything.router)  # before fhir: Patient/[id]/$everything is not a resource
    app.include_router(smart_configuration.router)  # before fhir: /fhir/.well-known/... is not a read
    app.include_router(fhir.router)
    app.include_router(admin.router)
    app.include_router(admin_actions.router)
    app.include_router(hl7_batch.router)
    install_console(app, settings, tokens, test_message)
    install_docs(app, public=settings.api.public_docs)
    install_cors(app, settings.api.cors_origins)  # last, so outermost: a preflight is answered before anything else
    return app
