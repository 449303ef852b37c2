"""Sinks: where a converted, validated transaction Bundle goes (the built-in store; remote servers later)."""

from __future__ import annotations

from typing import Any, Protocol

from gateway.store.resources import ApplyResult


class Sink(Protocol):
    def deliver(self, bundle: dict[str, Any]) -> ApplyResult:
        """Apply ``bundle`` exactly once in effect; raise DeliveryError, or StoreUnavailable when
        the database does not answer."""
        ...
