"""Named functions a mapping may call. Mappings stay data: they name these, never contain code.

Three kinds, each in its own registry, checked at load:

* ``transform: name`` turns the text of a value into a FHIR primitive (``dtm_to_date``);
* ``function: name`` (or a datatype map implemented in Python) builds a FHIR value from a v2
  element: ``(element, context, table) -> value | None``;
* ``when: {name: ...}`` conditions test v2 values: ``(element, *arguments) -> bool``.

A function returns None (never "", {} or []) when it has nothing to say. This package holds
them, one module per family; importing it fills the registries (gateway/convert/functions/registry.py) with
every family, and names what other modules use.
"""

from __future__ import annotations

from gateway.convert.functions import (
    builders,
    builders_orders,
    builders_values,
    messaging,
    predicates,
    scheduling,
    text,
)
from gateway.convert.functions.predicates import CONDITION_ARGUMENT
from gateway.convert.functions.registry import (
    BUILDER_FIELDS,
    BUILDER_READS,
    BUILDERS,
    CONDITIONS,
    FIELD_CONDITIONS,
    READS,
    TRANSFORMS,
    ZONED_TRANSFORMS,
    Builder,
    Condition,
    Transform,
    builder,
    condition,
    transform,
)
from gateway.convert.functions.text import oid_to_urn, text_of, to_decimal, to_integer, uuid_to_urn

__all__ = [
    "BUILDERS",
    "BUILDER_FIELDS",
    "BUILDER_READS",
    "CONDITIONS",
    "CONDITION_ARGUMENT",
    "FIELD_CONDITIONS",
    "READS",
    "TRANSFORMS",
    "ZONED_TRANSFORMS",
    "Builder",
    "Condition",
    "Transform",
    "builder",
    "builders",
    "builders_orders",
    "builders_values",
    "condition",
    "messaging",
    "oid_to_urn",
    "predicates",
    "scheduling",
    "text",
    "text_of",
    "to_decimal",
    "to_integer",
    "transform",
    "uuid_to_urn",
]
