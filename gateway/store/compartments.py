"""The Patient compartment (R4 compartmentdefinition-patient.html) of the types the store indexes:
which reference search parameters of a resource place it in a Patient's compartment.

A Patient-level or Group-level $export (Bulk Data IG, export.html) takes the resources in the
compartments of all Patients (or of a Group's members): those with an index row of one of these
parameters pointing at a Patient (the index of the current version). Parameters the store does not
index are left out (Device, Group and the like are not stored types).
"""

from __future__ import annotations

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
