"""Deliver converted Bundles into the built-in FHIR store."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from gateway.store.resources import ApplyResult, ResourceStore


class StoreSink:
    """The default sink: one transaction Bundle becomes one database transaction."""

    def __init__(self, engine: Engine):
        self.store = ResourceStore(engine)

    def deliver(self, bundle: dict[str, Any]) -> ApplyResult:
        """Apply ``bundle``; raises DeliveryError, or TransientDeliveryError when a retry may succeed."""
        return self.store.apply_bundle(bundle)
