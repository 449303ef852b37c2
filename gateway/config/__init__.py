"""Configuration: the ``HL7GW_*`` environment variables, read once into one typed object
(``settings.py``) and handed to the components by sections (``sections.py``)."""

from __future__ import annotations

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
from gateway.config.settings import Settings, load_settings, unknown_variables
from gateway.config.values import (
    ADMIN_TOKEN_FILE_NAME,
    METRICS_ROLES,
    ROLE_RANK,
    ApiToken,
    Role,
    legacy_token_name,
    parse_sender_zones,
    parse_tokens,
)

__all__ = [
    "ADMIN_TOKEN_FILE_NAME",
    "METRICS_ROLES",
    "ROLE_RANK",
    "ApiSettings",
    "ApiToken",
    "AuditSettings",
    "ConversionSettings",
    "ExportSettings",
    "InboxSettings",
    "IntakeSettings",
    "LoggingSettings",
    "MetricsSettings",
    "MllpSettings",
    "OidcSettings",
    "Role",
    "Settings",
    "SinkSettings",
    "SubscriptionSettings",
    "StorageSettings",
    "WorkerSettings",
    "legacy_token_name",
    "load_settings",
    "parse_sender_zones",
    "parse_tokens",
    "unknown_variables",
]
