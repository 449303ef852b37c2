"""The MessageHeader of every converted message (IG MSH[MessageHeader], SFT[MessageHeader], and
MSA[MessageHeader] in a response a site maps) and the software the SFT segments name, as Devices
(IG SFT[Device]) the Provenance names as entities."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.convert.functions.ids import provenance as provenance_key
from gateway.convert.functions.ids import resource_id
from gateway.convert.runtime.engine import Converter
from gateway.validate import validate_bundle
from tests.support.convert import MSH_ADT, PID, PV1, converter, message, only, resources, segment

DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
INSTALL_DATE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Device.version.installDate"

# A v2.8 header naming everything MSH[MessageHeader] maps: applications and facilities with
# universal ids, responsible organizations (MSH-22/23), network addresses (MSH-24/25), processing
# id and mode, language.
MSH_28 = (
    "MSH|^~\\&|ADTApp^1.2.3.4.1^ISO|GHH^2.16.840.1.1^ISO|EHRApp^1.2.3.4.2^ISO|RcvFac^1.2.3.4.3^ISO|"
    "20240301080000+0100||ADT^A01^ADT_A01|MSG0028|P^T|2.8|||||||en-US^English^ISO639|||"
    "GHH Inc.^L^^^^^^^^1234|EHR Inc.^L^^^^^^^^5678|^https://adt.example.org/out^URI|^https://ehr.example.org/in^URI"
)
SFT_RELAY = "SFT|Orion Health^L|2.4.3.52854|Rhapsody|RAP234|Relay engine|20070725111624"
SFT_EHR = "SFT|GHH Software^L|7.1|GHH ADT|B71|Admissions|20230101"
# A v2.3 header: local names only, no SFT (v2.3 has none), no processing mode, no language.
MSH_23 = "MSH|^~\\&|ADTAPP|GHH|RCV|RCVFAC|20240101120000||ADT^A04|CTRL23|P|2.3"


def _ref(resource: dict) -> dict:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _named(bundle: dict, resource_type: str, name: str) -> dict:
    (found,) = [r for r in resources(bundle, resource_type) if r.get("name") == name]
    return found


def test_a_v28_header_with_software_becomes_the_message_header() -> None:
    bundle = converter().convert(message(MSH_28, SFT_EHR, SFT_RELAY, "EVN||20240301080000", PID, PV1))
    validate_bundle(bundle)
    header = only(bundle, "MessageHeader")
    assert bundle["entry"][0]["resource"] is header  # first, as in a FHIR message
    assert header["eventCoding"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
        "code": "A01",
        "display": "ADT/ACK - Admit/visit notification",
    }
    # MSH-24 is the endpoint (better than MSH-3's OID); the first SFT names the software.
    assert header["source"] == {
        "name": "ADTApp",
        "endpoint": "https://adt.example.org/out",
        "software": "GHH ADT",
        "version": "7.1",
    }
    assert header["sender"] == _ref(_named(bundle, "Organization", "GHH"))
    assert header["responsible"] == _ref(_named(bundle, "Organization", "GHH Inc."))
    (destination,) = header["destination"]
    receiving_app = [d for d in resources(bundle, "Device") if "identifier" in d]
    assert destination["target"] == _ref(receiving_app[0])
    assert receiving_app[0]["identifier"][0]["value"] == "urn:oid:1.2.3.4.2"
    assert receiving_app[0]["identifier"][0]["system"] == "urn:ietf:rfc:3986"
    assert receiving_app[0]["identifier"][1] == {"value": "EHRApp"}
    assert destination["name"] == "EHRApp"
    assert destination["endpoint"] == "https://ehr.example.org/in"  # MSH-25 before MSH-5
    assert destination["receiver"] == _ref(_named(bundle, "Organization", "EHR Inc."))  # MSH-23 before MSH-6
    assert header["meta"]["tag"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0103", "code": "P", "display": "Production"},
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0207",
            "code": "T",
            "display": "Current processing, transmitted at intervals (scheduled or on demand)",
        },
    ]
    assert header["language"] == "en-US"
    assert header["focus"] == [_ref(only(bundle, "Patient"))]


def test_each_sft_is_a_device_the_provenance_names() -> None:
    bundle = converter().convert(message(MSH_28, SFT_EHR, SFT_RELAY, "EVN||20240301080000", PID, PV1))
    software = [d for d in resources(bundle, "Device") if "deviceName" in d]
    assert [d["deviceName"] for d in software] == [
        [{"name": "GHH ADT", "type": "manufacturer-name"}],
        [{"name": "Rhapsody", "type": "manufacturer-name"}],
    ]
    relay = software[1]
    assert relay["manufacturer"] == "Orion Health"
    assert relay["modelNumber"] == "RAP234"
    assert relay["note"] == [{"text": "Relay engine"}]
    # SFT-6 has no offset: read in the zone of MSH-7 (+01:00).
    assert relay["version"] == [
        {"value": "2.4.3.52854", "extension": [{"url": INSTALL_DATE, "valueDateTime": "2007-07-25T11:16:24+01:00"}]}
    ]
    provenance = only(bundle, "Provenance")
    entities = [e for e in provenance["entity"] if "reference" in e["what"]]
    assert entities == [{"what": _ref(d), "role": "derivation"} for d in software]
    targets = provenance["target"]
    assert _ref(only(bundle, "MessageHeader")) in targets and all(_ref(d) in targets for d in software)


def test_the_same_software_is_one_device_in_every_message() -> None:
    first = converter().convert(message(MSH_28, SFT_RELAY, SFT_RELAY, "EVN||20240301080000", PID, PV1))
    second = converter().convert(message(MSH_ADT, SFT_RELAY, "EVN||20240101", PID, PV1))
    (one,) = [d["id"] for d in resources(first, "Device") if "deviceName" in d]
    (two,) = [d["id"] for d in resources(second, "Device") if "deviceName" in d]
    assert one == two
    upgraded = SFT_RELAY.replace("2.4.3.52854", "2.5.0")
    third = converter().convert(message(MSH_ADT, upgraded, "EVN||20240101", PID, PV1))
    assert one not in {d["id"] for d in resources(third, "Device")}


def test_a_v23_header_without_software_has_unknown_endpoints() -> None:
    bundle = converter().convert(message(MSH_23, "EVN|A04|20240101120000", PID, PV1))
    validate_bundle(bundle)
    header = only(bundle, "MessageHeader")
    assert header["eventCoding"]["code"] == "A04"
    # Local names are no URLs: R4's 1..1 endpoints say unknown (IG MSH-24/25 rows), none invented.
    unknown = {"extension": [{"url": DAR, "valueCode": "unknown"}]}
    assert header["source"] == {"name": "ADTAPP", "_endpoint": unknown}
    (destination,) = header["destination"]
    assert destination["_endpoint"] == unknown and "endpoint" not in destination
    assert destination["receiver"] == _ref(_named(bundle, "Organization", "RCVFAC"))
    assert header["meta"]["tag"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0103", "code": "P", "display": "Production"}
    ]
    assert "language" not in header and "responsible" not in header
    assert [d for d in resources(bundle, "Device") if "deviceName" in d] == []
    assert not any(e["what"].get("reference", "").startswith("Device/") for e in only(bundle, "Provenance")["entity"])


def test_a_header_naming_no_receiver_has_no_destination() -> None:
    msh = "MSH|^~\\&|ADTAPP^http://adt.example.org^URI|GHH|||20240101120000||ADT^A08^ADT_A01|CTRL9|D|2.5.1"
    bundle = converter().convert(message(msh, "EVN|A08|20240101120000", PID, PV1))
    validate_bundle(bundle)
    header = only(bundle, "MessageHeader")
    assert "destination" not in header
    assert header["source"] == {"name": "ADTAPP", "endpoint": "http://adt.example.org"}
    assert header["meta"]["tag"][0]["code"] == "D"


def test_the_message_header_id_is_keyed_like_the_provenance() -> None:
    msg = message(MSH_ADT, PID, PV1)
    bundle = converter().convert(msg)
    key = provenance_key(SimpleNamespace(message=msg))  # sender, MSH-10 and a digest of the message
    assert only(bundle, "Provenance")["id"] == resource_id("Provenance", key)
    assert only(bundle, "MessageHeader")["id"] == resource_id("MessageHeader", key)
    resent = message(MSH_ADT.replace("|CTRL1|", "|CTRL2|"), PID, PV1)
    assert only(converter().convert(resent), "MessageHeader")["id"] != resource_id("MessageHeader", key)


def test_the_focus_is_the_events_primary_resources() -> None:
    oru = MSH_ADT.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    obr, obx = "OBR|1|P1|F1|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5|mmol/L|||||F"
    results = converter().convert(message(oru, SFT_RELAY, PID, obr, obx))
    validate_bundle(results)
    focus = only(results, "MessageHeader")["focus"]
    expected = [only(results, t) for t in ("Patient", "ServiceRequest", "DiagnosticReport")]
    assert focus == [_ref(r) for r in expected]
    assert "Observation/" not in str(focus)
    assert only(results, "MessageHeader")["source"]["software"] == "Rhapsody"

    siu = MSH_ADT.replace("ADT^A01^ADT_A01", "SIU^S12^SIU_S12")
    # A booked appointment has a start and an end (R4 app-3): SCH-11 gives them.
    sch = segment("SCH", {1: "A1^PLC", 2: "A1F^FIL", 11: "^^30^20240301090000^20240301093000"})
    # SIU_S12 takes the SFT of v2.5 and later (hl7apy's structure lacks it).
    appointment = converter().convert_with_report(message(siu, SFT_RELAY, sch, PID))
    assert "SFT#2" not in appointment.unused_segments
    header = only(appointment.bundle, "MessageHeader")
    assert header["focus"] == [_ref(only(appointment.bundle, t)) for t in ("Patient", "Appointment")]
    assert header["source"]["software"] == "Rhapsody"


# A response structure a site maps (no shipped trigger map converts one): ORL^O22, the laboratory
# order response of v2.5, its MSA answering the order message ORD0042.
ORL_STRUCTURE = """\
structure: ORL_O22
segments:
  - MSH
  - "[{SFT}]"
  - MSA
  - "[{ERR}]"
  - "[{NTE}]"
  - "[RESPONSE]":
    - "[PATIENT]":
      - PID
      - "[{ORDER}]":
        - ORC
        - "[OBSERVATION_REQUEST]":
          - OBR
"""
ORL_MESSAGE = "message: ORL_O22\nextends: _orders\nstructure: ORL_O22\n"
MSH_ORL = "MSH|^~\\&|LIS|GHHLAB|EHR|GHH|20240312141502+0100||ORL^O22^ORL_O22|ACK0042|P|2.5.1"


@pytest.fixture(scope="module")
def site_converter(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    site = tmp_path_factory.mktemp("site")
    (site / "structures").mkdir()
    (site / "messages").mkdir()
    (site / "structures/ORL_O22.yaml").write_text(ORL_STRUCTURE)
    (site / "messages/ORL_O22.yaml").write_text(ORL_MESSAGE)
    return Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)


@pytest.mark.parametrize(("code", "expected"), [("AA", "ok"), ("AE", "fatal-error"), ("AR", "transient-error")])
def test_an_msa_is_the_response(site_converter: Converter, code: str, expected: str) -> None:
    msa = f"MSA|{code}|ORD0042"
    orc, obr = "ORC|OK|P1|F1", "OBR|1|P1|F1|GLU^Glucose^L"
    bundle = site_converter.convert(message(MSH_ORL, msa, PID, orc, obr))
    validate_bundle(bundle)
    header = only(bundle, "MessageHeader")
    assert header["response"] == {"code": expected, "identifier": "ORD0042"}
    assert header["eventCoding"]["code"] == "O22"
    assert header["focus"][1] == _ref(only(bundle, "ServiceRequest"))


@pytest.mark.parametrize("msa", ["MSA|AA|ORD 0042/1", "MSA|XX|ORD0042", "MSA||ORD0042", "MSA|AA"])
def test_an_msa_r4_cannot_say_makes_no_response(site_converter: Converter, msa: str) -> None:
    # A control id that is no FHIR id, or a code not in table 0008: R4 needs both, so none.
    bundle = site_converter.convert(message(MSH_ORL, msa, PID))
    validate_bundle(bundle)
    assert "response" not in only(bundle, "MessageHeader")


def test_no_shipped_message_has_an_msa() -> None:
    # The include is there for a site's response structures; the shipped ones have no MSA slot.
    structures = converter().mappings.structures.values()
    assert all("SFT" in slot.anywhere and "MSA" not in slot.anywhere for slot in structures)
