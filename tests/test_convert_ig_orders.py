"""Orders (issue 14 items 8 and 9): order identity across ORM and ORU, the Provenance of each order
(IG ORC[Provenance]) and the order's timing (IG TQ1[ServiceRequest], TQ1[MedicationRequest])."""

from __future__ import annotations

from pathlib import Path

from gateway.convert.functions.ids import resource_id
from gateway.convert.runtime.engine import Converter
from tests.support.convert import PID, converter, message, message_provenance, only, resources

ORM = "MSH|^~\\&|OE|Hosp|LAB|Lab|20240301080000+0100||ORM^O01^ORM_O01|M1|P|2.5.1"
ORU = "MSH|^~\\&|LAB|Lab|OE|Hosp|20240302100000+0100||ORU^R01^ORU_R01|R1|P|2.5.1"
OML = "MSH|^~\\&|OE|Hosp|LAB|Lab|20240301080000+0100||OML^O21^OML_O21|M2|P|2.5.1"
RDE = "MSH|^~\\&|OE|Hosp|PH|Ph|20240301080000+0100||RDE^O11^RDE_O11|M3|P|2.5.1"
OBR = "OBR|1|{placer}|{filler}|CBC^Blood count^L"
OBX = "OBX|1|NM|HGB^Hemoglobin^L||13.5|g/dL|||||F"
PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def _order(*lines: str) -> dict:
    return only(converter().convert(message(*lines)), "ServiceRequest")


def test_an_orm_with_the_placer_number_and_the_oru_answering_it_name_the_same_order() -> None:
    placed = _order(ORM, PID, "ORC|NW|P100^OE", OBR.format(placer="P100^OE", filler=""))
    answered = _order(ORU, PID, "ORC|RE|P100^OE|F900^LAB", OBR.format(placer="P100^OE", filler="F900^LAB"), OBX)
    assert placed["id"] == answered["id"] == resource_id("ServiceRequest", "placer|OE|P100")
    # The ORU's DiagnosticReport keeps its filler key (stored report and observation ids do not move).
    oru = converter().convert(
        message(ORU, PID, "ORC|RE|P100^OE|F900^LAB", OBR.format(placer="P100^OE", filler="F900^LAB"), OBX)
    )
    assert only(oru, "DiagnosticReport")["id"] == resource_id("DiagnosticReport", "filler|LAB|F900")


def test_an_order_with_only_a_filler_number_is_keyed_on_it() -> None:
    order = _order(ORM, PID, "ORC|SN||F900^LAB", OBR.format(placer="", filler="F900^LAB"))
    assert order["id"] == resource_id("ServiceRequest", "filler|LAB|F900")
    # The OBR's numbers stand in for an ORC that has none.
    assert _order(ORM, PID, "ORC|NW", OBR.format(placer="P7^OE", filler="F7^LAB"))["id"] == resource_id(
        "ServiceRequest", "placer|OE|P7"
    )


def test_a_pharmacy_order_is_keyed_placer_first_too() -> None:
    rxo = "RXO|RX1^Amoxicillin^L|500||mg"
    placed = only(converter().convert(message(ORM, PID, "ORC|NW|P200^OE", rxo)), "MedicationRequest")
    rxe = "RXE|^^^20240301090000+0100|RX1^Amoxicillin^L|500||mg"
    encoded = only(converter().convert(message(RDE, PID, "ORC|NW|P200^OE|F200^PH", rxe)), "MedicationRequest")
    assert placed["id"] == encoded["id"] == resource_id("MedicationRequest", "placer|OE|P200")


ORC_FULL = (
    "ORC|NW|P100^OE||G7^OE|SC||||20240301075500+0100|1111^Enter^Ed|2222^Verify^Vera|3333^Order^Olga"
    "|||||EO^Entering Org||4444^Act^Al||Ord Fac^L^^^^^^^^OF1|||||||R"
)


def test_each_order_has_a_provenance_of_its_own() -> None:
    bundle = converter().convert(message(ORM, PID, ORC_FULL, OBR.format(placer="P100^OE", filler="")))
    order = only(bundle, "ServiceRequest")
    mine = message_provenance(bundle)
    (provenance,) = [p for p in resources(bundle, "Provenance") if p is not mine]
    assert provenance["target"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert {"reference": f"Provenance/{provenance['id']}"} in mine["target"]
    assert provenance["activity"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
        "code": "CREATE",
        "display": "create",
    }
    assert provenance["recorded"] == provenance["occurredDateTime"] == "2024-03-01T07:55:00+01:00"  # ORC-9
    agents = {a["type"]["coding"][0]["code"]: a for a in provenance["agent"]}
    assert set(agents) == {"enterer", "verifier", "author", "performer"}
    assert all(a["type"]["coding"][0]["system"] == PARTICIPANT for a in agents.values())
    made = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}

    def who(role: str, key: str = "who") -> dict:
        return made[agents[role][key]["reference"].split("/")[1]]

    assert who("enterer")["name"][0]["family"] == "Enter"  # ORC-10
    assert who("enterer", "onBehalfOf")["name"] == "Entering Org"  # ORC-17
    assert who("verifier")["name"][0]["family"] == "Verify"  # ORC-11
    assert who("author")["name"][0]["family"] == "Order"  # ORC-12
    assert who("performer")["name"][0]["family"] == "Act"  # ORC-19
    location = made[provenance["location"]["reference"].split("/")[1]]
    assert location["name"] == "Ord Fac" and location["identifier"][0]["value"] == "OF1"  # ORC-21
    assert provenance["meta"]["security"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted"}
    ]  # ORC-28
    # Deterministic, and not the message's: the same message gives the same ids.
    again = converter().convert(message(ORM, PID, ORC_FULL, OBR.format(placer="P100^OE", filler="")))
    assert sorted(p["id"] for p in resources(again, "Provenance")) == sorted(p["id"] for p in (provenance, mine))


def test_an_order_provenance_without_people_or_time_falls_back_on_the_message() -> None:
    bundle = converter().convert(message(ORM, PID, "ORC|CA|P100^OE", OBR.format(placer="P100^OE", filler="")))
    (provenance,) = [p for p in resources(bundle, "Provenance") if p is not message_provenance(bundle)]
    assert provenance["activity"]["coding"][0]["code"] == "CANCEL"
    assert provenance["recorded"] == "2024-03-01T08:00:00+01:00"  # MSH-7
    assert "occurredDateTime" not in provenance
    (agent,) = provenance["agent"]
    assert agent["type"]["coding"][0]["code"] == "author"  # the sending facility MSH-4
    organization = next(e["resource"] for e in bundle["entry"] if e["fullUrl"].endswith(agent["who"]["reference"][13:]))
    assert organization["name"] == "Hosp"


def test_an_order_provenance_with_nothing_to_target_is_left_out(tmp_path: Path) -> None:
    # A site whose orders need a service code (OBR-4): an OBR without one makes no ServiceRequest,
    # so its ORC's Provenance has no target (1..*) and is left out, with a note.
    (tmp_path / "messages").mkdir()
    (tmp_path / "messages/_orders.yaml").write_text(
        "message: _orders\nextends: _orders\nresources:\n  service_request:\n    when: {valued: OBR-4}\n"
    )
    site = Converter.load(overlay_dir=tmp_path, default_tz=None, sender_tz=None)
    conversion = site.convert_with_report(message(ORM, PID, "ORC|NW|P100^OE", "OBR|1|P100^OE"))
    assert resources(conversion.bundle, "ServiceRequest") == []
    assert len(resources(conversion.bundle, "Provenance")) == 1  # the message's own
    assert "ORC#3 left out (Provenance order_provenance): nothing in the message for its target" in conversion.notes


def test_results_make_no_order_provenance() -> None:
    bundle = converter().convert(
        message(ORU, PID, "ORC|RE|P100^OE|F900^LAB", OBR.format(placer="P100^OE", filler="F900^LAB"), OBX)
    )
    assert len(resources(bundle, "Provenance")) == 1


TQ1 = "TQ1|1|2^mL|Q6H^Every 6 hours^HL70335|0800~1400|||20240301090000+0100|20240305090000+0100|S||note||30^min|12"


def test_service_request_timing_from_tq1() -> None:
    order = _order(OML, PID, "ORC|NW|P100^OE", TQ1, OBR.format(placer="P100^OE", filler=""))
    timing = order["occurrenceTiming"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0335", "code": "Q6H"} in timing["code"]["coding"]
    assert timing["repeat"] == {
        "frequency": 1,
        "period": 6,
        "periodUnit": "h",
        "boundsPeriod": {"start": "2024-03-01T09:00:00+01:00", "end": "2024-03-05T09:00:00+01:00"},
        "timeOfDay": ["08:00:00", "14:00:00"],
        "duration": 30,
        "durationUnit": "min",
        "count": 12,
    }
    assert order["quantityQuantity"] == {"value": 2, "unit": "mL"}
    assert order["priority"] == "stat"
    # A service duration without bounds is boundsDuration, in UCUM.
    tq1 = "TQ1|1||BID|||7^d"
    order = _order(OML, PID, "ORC|NW|P100^OE", tq1, OBR.format(placer="P100^OE", filler=""))
    assert order["occurrenceTiming"]["repeat"] == {
        "frequency": 2,
        "period": 1,
        "periodUnit": "d",
        "boundsDuration": {"value": 7, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"},
    }


def test_medication_request_timing_from_tq1() -> None:
    tq1 = "TQ1|1||Q1J135^Mon Wed Fri^HL70335||||20240301090000+0100||R|with food||||10"
    rxe = "RXE|^^^20240301090000+0100|RX1^Amoxicillin^L|500||mg"
    request = only(converter().convert(message(RDE, PID, "ORC|NW|P200^OE", tq1, rxe)), "MedicationRequest")
    dosage = request["dosageInstruction"][0]
    assert dosage["timing"]["repeat"] == {
        "frequency": 3,
        "period": 1,
        "periodUnit": "wk",
        "dayOfWeek": ["mon", "wed", "fri"],
        "boundsPeriod": {"start": "2024-03-01T09:00:00+01:00"},
        "count": 10,
    }
    assert dosage["additionalInstruction"] == [{"text": "with food"}]  # TQ1-10
    # A meal-relative event with an offset (TQ1-5 relative to RPT.8), no explicit times.
    tq1 = "TQ1|1||Q1D&&HL70335^^^^^^^PC|0800|30^min"
    request = only(converter().convert(message(RDE, PID, "ORC|NW|P200^OE", tq1, rxe)), "MedicationRequest")
    repeat = request["dosageInstruction"][0]["timing"]["repeat"]
    assert repeat["when"] == ["PC"] and repeat["offset"] == 30 and "timeOfDay" not in repeat


def test_orc_7_timing_of_a_v23_order() -> None:
    orm = "MSH|^~\\&|OE|Hosp|LAB|Lab|20240301080000+0100||ORM^O01|M1|P|2.3"
    orc = "ORC|NW|P100^OE|||||1^Q6H&0800,1400^M30^20240301090000+0100^20240305090000+0100^S^^^^^^4|||||||(555)123-4567"
    order = _order(orm, PID, orc, OBR.format(placer="P100^OE", filler=""))
    assert order["occurrenceTiming"]["repeat"] == {
        "frequency": 1,
        "period": 6,
        "periodUnit": "h",
        "timeOfDay": ["08:00:00", "14:00:00"],  # RI.2
        "boundsPeriod": {"start": "2024-03-01T09:00:00+01:00", "end": "2024-03-05T09:00:00+01:00"},  # TQ.4, TQ.5
        "count": 4,  # TQ.12
    }
    assert order["quantityQuantity"] == {"value": 1} and order["priority"] == "stat"  # TQ.1, TQ.6
    (callback,) = order["extension"]  # ORC-14
    assert callback["url"] == "http://hl7.org/fhir/StructureDefinition/servicerequest-order-callback-phone-number"
    assert callback["valueContactPoint"]["value"] == "(555)123-4567"


def test_orc_7_rxo_9_of_a_pharmacy_order() -> None:
    orm = "MSH|^~\\&|OE|Hosp|PH|Ph|20240301080000+0100||ORM^O01|M1|P|2.4"
    bundle = converter().convert(message(orm, PID, "ORC|NW|P200^OE|||||^BID^D5^^^R", "RXO|RX1^Amox^L|500||mg|||||G"))
    request = only(bundle, "MedicationRequest")
    assert request["dosageInstruction"][0]["timing"]["repeat"] == {
        "frequency": 2,
        "period": 1,
        "periodUnit": "d",
        "boundsDuration": {"value": 5, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"},  # TQ.3 D5
    }
    assert request["priority"] == "routine"
    assert request["substitution"]["allowedCodeableConcept"]["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0161",
            "code": "G",
            "display": "Allow generic substitutions.",
        }
    ]


def test_rxr_5_routing_instruction() -> None:
    rxe = "RXE|^^^20240301090000+0100|RX1^Amoxicillin^L|500||mg"
    rxr = "RXR|PO^Oral^HL70162||||WF^With food^L"
    request = only(converter().convert(message(RDE, PID, "ORC|NW|P200^OE", rxe, rxr)), "MedicationRequest")
    assert request["dosageInstruction"][0]["additionalInstruction"] == [
        {"coding": [{"code": "WF", "display": "With food"}]}
    ]


def test_orc_of_an_immunization_placer_group_and_recorded() -> None:
    vxu = "MSH|^~\\&|EHR|Clinic|IIS|State|20240301080000+0100||VXU^V04^VXU_V04|V1|P|2.5.1"
    orc = "ORC|RE|P1^EHR|F1^IIS|G1^EHR|||||20240301075000+0100"
    rxa = "RXA|0|1|20240301074500+0100||08^HepB^CVX|0.5|mL^mL^UCUM"
    immunization = only(converter().convert(message(vxu, PID, orc, rxa)), "Immunization")
    assert immunization["identifier"][2]["value"] == "G1"  # ORC-4
    assert immunization["identifier"][2]["type"]["coding"][0]["code"] == "PGN"
    assert immunization["recorded"] == "2024-03-01T07:50:00+01:00"  # ORC-9


def test_orc_33_alternate_placer_order_number() -> None:
    oml = OML.replace("|2.5.1", "|2.7")
    orc = "ORC|NW|P100^OE" + "|" * 31 + "ALT7^^^OE2"
    order = _order(oml, PID, orc, OBR.format(placer="P100^OE", filler=""))
    (alternate,) = [i for i in order["identifier"] if i["value"] == "ALT7"]
    assert alternate["type"]["coding"][0]["code"] == "PLAC"
    assert order["id"] == resource_id("ServiceRequest", "placer|OE|P100")  # ORC-2 still names the order
