"""The access audit trail's records: a read or search of patient data through the FHIR API, and a failed
authentication, each as an R4 AuditEvent shaped as IHE Basic Audit Log Patterns (BALP) say.

A read (``read``, ``vread``, ``history-instance``; ``operation``: ``Patient/[id]/$everything``, a
read of one Patient's record, its subtype naming the OperationDefinition too) follows BALP
PatientRead (Read when it names several Patients), a search (``search-type``, ``history-type``,
``history-system``) BALP PatientQuery (or Query):

* ``type`` audit-event-type#rest; ``subtype`` the restful-interaction code; ``action`` R for a
  read, E for a search; ``recorded``; ``outcome`` 0 (only answers that carried data are recorded);
* ``agent``: the user (the token's name as ``who.display``, ``altId`` and ``name``; its role;
  ``requestor`` true), the client (its IP address) and the server (the FHIR base URL), typed DCM
  110153 Source / 110152 Destination Role ID the way BALP orders them for reads and for queries;
* ``source``: the gateway, an application server, on this host;
* ``entity``: every Patient in the answer (type 1 Person, role 1 Patient); for a read the resource
  read (type 2, role 4 Domain Resource); for a search the query (type 2, role 24 Query, ``query``
  the request base64-encoded, ``description`` the same text; for POST [type]/_search ``description``
  is "POST /fhir/T/_search" and ``query`` its parameters, form-encoded); the client's X-Request-Id, if any.

One answer is one AuditEvent. BALP asks for one per Patient (PatientQuery names exactly one): an
answer naming one Patient, the usual case, is exactly that; one naming several is one event that
conforms to BALP Query / Read and lists them all. One event per Patient made a page of 50
Observations cost the API process 17 AuditEvents (docs/observability.md, "What it costs").

The Patients of an answer are the Patients returned and every Patient another returned resource
references (its subject, patient, performer...): what a Patient compartment holds. Reads of the
audit trail itself are recorded with no Patient entity, so looking at a
patient's trail does not add to it. A failed authentication is DICOM 110114 User Authentication
with the route and the client's address, and never anything of the token presented.
"""

from __future__ import annotations

import base64
import enum
import functools
import re
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import fhirjson
from gateway.store.audit import API_ROLE_SYSTEM
from gateway.store.fhir_dates import format_instant

_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
_BALP_PROFILE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
#: The Bulk Data IG's $export OperationDefinition, naming the operation in a subtype.
_BULK_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
#: The core specification's OperationDefinitions (Patient-everything), naming an operation in a subtype.
_CORE_OPERATION = "http://hl7.org/fhir/OperationDefinition"
#: AuditEvent.agent.network.type (R4 network-type): 2 IP address, 5 URI.
_IP_ADDRESS, _URI = "2", "5"
_HOST = socket.gethostname() or "unknown"
#: A literal reference to a Patient (relative, absolute or versioned) as compact JSON writes it;
#: a quote inside a string value is escaped, so string values never match.
_PATIENT_REFERENCE = re.compile(rb'"reference":"(?:[^"]*/)?Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^"]*)?"')


class Interaction(enum.StrEnum):
    """The FHIR interaction (restful-interaction code) that returned the data."""

    read = "read"
    vread = "vread"
    history_instance = "history-instance"
    history_type = "history-type"
    history_system = "history-system"
    search_type = "search-type"
    search_system = "search-system"
    #: An operation on one Patient that returns its record (``Patient/[id]/$everything``): audited as a read.
    operation = "operation"

    @property
    def is_query(self) -> bool:
        return self in (
            Interaction.history_type,
            Interaction.history_system,
            Interaction.search_type,
            Interaction.search_system,
        )


class AuthFailure(enum.StrEnum):
    """Why a request was refused: no token, a token nobody issued, or a role too low for the route."""

    missing = "missing"
    invalid = "invalid"
    forbidden = "forbidden"


#: outcome (R4 audit-event-outcome) and outcomeDesc of a refused request: a request without a token
#: is a minor failure (a client can retry with one); a wrong token or a role too low is serious.
_FAILURE = {
    AuthFailure.missing: ("4", "no bearer token presented"),
    AuthFailure.invalid: ("8", "the bearer token presented is not known"),
    AuthFailure.forbidden: ("8", "the token's role does not allow this request"),
}


@dataclass(frozen=True, slots=True)
class Access:
    """One answer of the FHIR API that carried resources, as the API saw it; the events are made later."""

    interaction: Interaction
    #: The token's name (Principal.name) and role, never the token.
    who: str
    role: str
    #: The client's IP address (None when the server does not know it) and the FHIR base URL.
    client: str | None
    server: str
    #: The request line as received, e.g. "GET /fhir/Observation?patient=p1" (access_token left out).
    request: str
    #: The answer's JSON as the client got it: the resource read, or the Bundle of a search or history.
    answer: bytes
    recorded: datetime
    #: The resource read (read, vread, history-instance): "Type/id" or "Type/id/_history/n".
    what: str | None = None
    #: The client's X-Request-Id header, if any.
    request_id: str | None = None
    #: A search's parameters when they came in the body (POST [type]/_search), form-encoded; the
    #: request line then has none of them (names and birth dates stay out of URLs).
    parameters: str | None = None
    #: The operation's OperationDefinition (``Patient-everything``) when ``interaction`` is ``operation``.
    operation: str | None = None


def patients_in(resources: Iterable[dict[str, Any]]) -> list[str]:
    """The ids of the Patients returned and of those the other resources reference, sorted."""
    found: set[str] = set()
    others = []
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            if isinstance(resource.get("id"), str):
                found.add(resource["id"])
        else:
            others.append(resource)
    if others:  # one pass of C code over the JSON: walking the dicts in Python cost more than the search
        found.update(match.decode() for match in _PATIENT_REFERENCE.findall(fhirjson.dumps(others)))
    return sorted(found)


def answer_resources(access: Access) -> list[dict[str, Any]]:
    """The resources of the answer: the one read, or the matches, included ones or versions of a Bundle."""
    answer = fhirjson.loads(access.answer)
    if access.interaction in (Interaction.read, Interaction.vread):
        return [answer]
    entries = answer.get("entry", ()) if isinstance(answer, dict) else ()
    return [e["resource"] for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]


def access_events(access: Access) -> list[dict[str, Any]]:
    """The AuditEvent of ``access``, naming every Patient in the answer; none when there is none; one
    without a Patient for an answer of AuditEvents (the trail itself: the Patients they name are not counted)."""
    resources = answer_resources(access)
    trail = any(resource.get("resourceType") == "AuditEvent" for resource in resources)
    data = [r for r in resources if r.get("resourceType") != "AuditEvent"] if trail else resources
    patients = patients_in(data)
    if not patients and not trail:
        return []
    return [_access_event(access, patients)]


def _patient_entity(patient: str) -> dict[str, Any]:
    return {
        "what": {"reference": f"Patient/{patient}"},
        "type": _coding(_ENTITY_TYPE, "1", "Person"),
        "role": _coding(_OBJECT_ROLE, "1", "Patient"),
    }


def _access_event(access: Access, patients: list[str]) -> dict[str, Any]:
    query = access.interaction.is_query
    # BALP: for a read the server is the source of the data; for a query, the client is the source of the query.
    client_role, server_role = ("110153", "110152") if query else ("110152", "110153")
    # PatientRead/PatientQuery name exactly one Patient; the Read/Query profiles they refine allow any number.
    profile = ("PatientQuery" if query else "PatientRead") if len(patients) == 1 else ("Query" if query else "Read")
    entities = [_patient_entity(patient) for patient in patients]
    if query:
        entities.append(
            {
                "type": _coding(_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(_OBJECT_ROLE, "24", "Query"),
                "description": access.request,
                "query": base64.b64encode((access.parameters or access.request).encode()).decode("ascii"),
            }
        )
    elif access.what:
        entities.append(
            {
                "what": {"reference": access.what},
                "type": _coding(_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(_OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    if access.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": access.request_id}},
                "type": _coding(_BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
            }
        )
    agents = [
        _user(access.who, access.role),
        _agent(_dcm_role(client_role), access.client or "unknown", access.client, _IP_ADDRESS),
        _agent(_dcm_role(server_role), "hl7gw", access.server, _URI),
    ]
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [_BALP_PROFILE + profile]},
        "type": _coding(_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": _subtypes(access),
        "action": "E" if query else "R",
        "recorded": format_instant(access.recorded),
        "outcome": "0",
        "agent": agents,
        "source": _source(),
        "entity": entities,
    }


def _subtypes(access: Access) -> list[dict[str, str]]:
    """The restful-interaction code; for an operation, its OperationDefinition too (as $export's events name theirs)."""
    subtypes = [_coding(_INTERACTION, access.interaction.value, access.interaction.value)]
    if access.operation:
        name = access.operation.rpartition("-")[2]
        subtypes.append(_coding(_CORE_OPERATION, access.operation, f"${name}"))
    return subtypes


def auth_failure_event(
    failure: AuthFailure, method: str, path: str, client: str | None, recorded: datetime, who: str | None = None
) -> dict[str, Any]:
    """The AuditEvent of a refused request: the route (``path`` without its query), the client's address,
    and for a known token its name; never the token presented."""
    outcome, description = _FAILURE[failure]
    user: dict[str, Any] = {
        "type": {"coding": [_coding(_PARTICIPATION, "IRCP", "information recipient")]},
        "who": {"display": who or "unknown"},
        "requestor": True,
    }
    if who:
        user["altId"] = user["name"] = who
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": _coding(_DCM, "110114", "User Authentication"),
        "subtype": [_coding(_DCM, "110122", "Login")],
        "action": "E",
        "recorded": format_instant(recorded),
        "outcome": outcome,
        "outcomeDesc": f"{description} ({failure.value})",
        "agent": [user, _agent(_dcm_role("110153"), client or "unknown", client, _IP_ADDRESS)],
        "source": _source(),
        "entity": [{"type": _coding(_ENTITY_TYPE, "2", "System Object"), "description": f"{method} {path}"}],
    }


def _dcm_role(code: str) -> dict[str, str]:
    """DCM 110152 Destination Role ID or 110153 Source Role ID (the agent types BALP uses)."""
    return _coding(_DCM, code, "Destination Role ID" if code == "110152" else "Source Role ID")


def _user(who: str, role: str) -> dict[str, Any]:
    return {
        "type": {"coding": [_coding(_PARTICIPATION, "IRCP", "information recipient")]},
        "role": [{"coding": [{"system": API_ROLE_SYSTEM, "code": role}]}],
        "who": {"display": who},
        "altId": who,
        "name": who,
        "requestor": True,
    }


def _agent(kind: dict[str, str], display: str, address: str | None, network_type: str) -> dict[str, Any]:
    agent: dict[str, Any] = {"type": {"coding": [kind]}, "who": {"display": display}, "requestor": False}
    if address:
        agent["network"] = {"address": address, "type": network_type}
    return agent


def _source() -> dict[str, Any]:
    return {
        "site": _HOST,
        "observer": {"display": "hl7gw"},
        "type": [_coding(_SOURCE_TYPE, "4", "Application Server")],
    }


@functools.cache
def _coding(system: str, code: str, display: str) -> dict[str, str]:
    """One shared dict per coding (an event names each Patient with two): events are read, never changed."""
    return {"system": system, "code": code, "display": display}


@dataclass(frozen=True, slots=True)
class ExportAccess:
    """A FHIR Bulk Data $export kick-off (``file`` None) or the download of one of its files."""

    job_id: str
    who: str
    role: str
    client: str | None
    server: str
    #: The kick-off request's URL (for a download too: what the file answers).
    request: str
    recorded: datetime
    #: The file downloaded (its URL) and its resource type.
    file: str | None = None
    file_type: str | None = None
    #: A Group export's Group id.
    group: str | None = None
    request_id: str | None = None


def export_event(access: ExportAccess) -> dict[str, Any]:
    """One AuditEvent per kick-off and per file downloaded, shaped as BALP Query (a kick-off: action
    E, the query entity) or Read (a download: action R, the file and the query it answers).

    The Patients are not listed: a file holds up to 100,000 resources of thousands of Patients, and
    an event naming them all would cost as much as the download. The query and the export's
    transactionTime say exactly which resources the file holds (the store keeps every version), so
    an auditor can find every Patient a download disclosed.
    """
    download = access.file is not None
    client_role, server_role = ("110153", "110152") if not download else ("110152", "110153")
    entities: list[dict[str, Any]] = [
        {
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "24", "Query"),
            "description": access.request,
            "query": base64.b64encode(access.request.encode()).decode("ascii"),
        },
        {
            "what": {"identifier": {"system": "urn:hl7gw:bulk-export", "value": access.job_id}},
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "20", "Job"),
        },
    ]
    if access.group:
        entities.append(
            {
                "what": {"reference": f"Group/{access.group}"},
                "type": _coding(_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(_OBJECT_ROLE, "4", "Domain Resource"),
            }
        )
    if download:
        entities.append(
            {
                "what": {"identifier": {"value": access.file}},
                "type": _coding(_ENTITY_TYPE, "2", "System Object"),
                "role": _coding(_OBJECT_ROLE, "3", "Report"),
                "description": f"NDJSON file of {access.file_type} resources",
            }
        )
    if access.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": access.request_id}},
                "type": _coding(_BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id"),
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [_BALP_PROFILE + ("Read" if download else "Query")]},
        "type": _coding(_EVENT_TYPE, "rest", "Restful Operation"),
        "subtype": [
            _coding(_INTERACTION, "operation", "operation"),
            _coding(_BULK_EXPORT, "export", "$export file download" if download else "$export kick-off"),
        ],
        "action": "R" if download else "E",
        "recorded": format_instant(access.recorded),
        "outcome": "0",
        "agent": [
            _user(access.who, access.role),
            _agent(_dcm_role(client_role), access.client or "unknown", access.client, _IP_ADDRESS),
            _agent(_dcm_role(server_role), "hl7gw", access.server, _URI),
        ],
        "source": _source(),
        "entity": entities,
    }
