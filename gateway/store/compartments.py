"""The Patient compartment (R4 compartmentdefinition-patient.html) of the types the store indexes:
which reference search parameters of a resource place it in a Patient's compartment.

A Patient-level or Group-level $export (Bulk Data IG, export.html) takes the resources in the
compartments of all Patients (or of a Group's members): those with an index row of one of these
parameters pointing at a Patient (the index of the current version). Parameters the store does not
index are left out (Device, Group and the like are not stored types).

A token with SMART ``patient/`` scopes reads and searches one Patient's compartment: searches add
``compartment_condition``, reads check the resource with ``in_compartment``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, exists, false

from gateway.db.schema import fhir_resource, fhir_search_reference
from gateway.store.index import index_rows
from gateway.store.search_registry import reference_parameters

#: R4 CompartmentDefinition "patient": resource type -> the parameters that link it to a Patient.
_R4_PATIENT_COMPARTMENT: dict[str, tuple[str, ...]] = {
    "Account": ("subject",),
    "AllergyIntolerance": ("patient", "recorder", "asserter"),
    "Appointment": ("actor",),
    "AuditEvent": ("patient",),
    "Condition": ("patient", "asserter"),
    "Coverage": ("policy-holder", "subscriber", "beneficiary", "payor"),
    "DiagnosticReport": ("subject",),
    "DocumentReference": ("subject", "author"),
    "Encounter": ("patient",),
    "EpisodeOfCare": ("patient",),
    "Immunization": ("patient",),
    "MedicationAdministration": ("patient", "performer", "subject"),
    "MedicationDispense": ("subject", "patient", "receiver"),
    "MedicationRequest": ("subject",),
    "Observation": ("subject", "performer"),
    "Patient": ("link",),
    "Procedure": ("patient", "performer"),
    "Provenance": ("patient",),
    "RelatedPerson": ("patient",),
    "ServiceRequest": ("subject", "performer"),
    "Specimen": ("subject",),
}


def compartment_types() -> list[str]:
    """Types that can be in a Patient's compartment, sorted."""
    return sorted(_R4_PATIENT_COMPARTMENT)


def compartment_parameters(resource_type: str) -> tuple[str, ...]:
    """The index names (``SearchParam.index_name``: ``patient`` shares ``subject``'s rows) of the
    reference parameters of ``resource_type`` that place it in a Patient's compartment."""
    names = set(_R4_PATIENT_COMPARTMENT.get(resource_type, ()))
    return tuple(sorted({p.index_name for p in reference_parameters(resource_type) if p.name in names}))


def compartment_condition(resource_type: str, patient_id: str) -> ColumnElement[bool]:
    """A condition on ``fhir_resource`` rows of ``resource_type``: in the compartment of Patient ``patient_id``
    (the Patient itself, or a current index row of a compartment parameter pointing at it). A type outside
    the compartment matches nothing."""
    t = fhir_resource.c
    if resource_type == "Patient":
        return t.id == patient_id
    names = compartment_parameters(resource_type)
    if not names:
        return false()
    r = fhir_search_reference.c
    return exists().where(
        r.type == t.type, r.id == t.id, r.param.in_(names), r.target_type == "Patient", r.target_id == patient_id
    )


def in_compartment(resource_type: str, resource_id: str, resource: dict[str, Any], patient_id: str) -> bool:
    """Whether ``resource`` (any version, as given) is in the compartment of Patient ``patient_id``: the
    Patient itself, or a resource whose compartment parameters refer to it."""
    if resource_type == "Patient":
        return resource_id == patient_id
    names = frozenset(compartment_parameters(resource_type))
    if not names:
        return False
    rows = index_rows(resource_type, resource_id, resource, only=names)
    return any(
        param in names and kind == "Patient" and target == patient_id for _, _, param, kind, target in rows.references
    )
