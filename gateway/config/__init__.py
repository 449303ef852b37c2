"""Configuration: the ``HL7GW_*`` environment variables, read once into one typed object
(``settings.py``) and handed to the components by sections (``sections.py``)."""

from __future__ import annotations

from gateway.config.sections import (
    ApiSettings,
    ConversionSettings,
    IntakeSettings,
    LoggingSettings,
    MllpSettings,
    SinkSettings,
    StorageSettings,
    WorkerSettings,
)
from gateway.config.settings import Settings, load_settings, unknown_variables
from gateway.config.values import ROLE_RANK, Role, parse_sender_zones, parse_tokens

__all__ = [
    "ROLE_RANK",
    "ApiSettings",
    "ConversionSettings",
    "IntakeSettings",
    "LoggingSettings",
    "MllpSettings",
    "Role",
    "Settings",
    "SinkSettings",
    "StorageSettings",
    "WorkerSettings",
    "load_settings",
    "parse_sender_zones",
    "parse_tokens",
    "unknown_variables",
]
