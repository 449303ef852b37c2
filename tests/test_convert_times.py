"""Timestamps without an offset keep their time of day: read in the sender's zone, which is the
configured one, else MSH-7's offset, else the host's."""

from __future__ import annotations

import functools

from gateway.convert.runtime.engine import Converter
from tests.support.convert import PID, converter, message, message_provenance, only

MSH_LOCAL = "MSH|^~\\&|App|Fac|Rcv|RcvFac|20240312141502||ADT^A01^ADT_A01|CTRL1|P|2.5.1"
MSH_OFFSET = MSH_LOCAL.replace("20240312141502", "20240312141502-0500")
PV1_ADMIT = "PV1|1|I|||||||||||||||||V100^^^HOSP^VN|||||||||||||||||||||||||202403121400"
OBR_ORU = "OBR|1|P1|F1|GLU^Glucose^L|||202403121300|||||||||||||||202403121530||CH|F"


@functools.cache
def hosted(zone: str) -> Converter:
    return Converter.load(host_tz=zone)


def _start(bundle: dict) -> str:
    return str(only(bundle, "Encounter")["period"]["start"])


def test_msh7_offset_is_the_senders_clock() -> None:
    assert _start(converter().convert(message(MSH_OFFSET, PID, PV1_ADMIT))) == "2024-03-12T14:00:00-05:00"


def test_without_msh7_offset_the_host_zone_with_its_daylight_saving_time() -> None:
    assert _start(hosted("Europe/Berlin").convert(message(MSH_LOCAL, PID, PV1_ADMIT))) == "2024-03-12T14:00:00+01:00"
    summer = PV1_ADMIT.replace("202403121400", "202407121400")
    assert _start(hosted("Europe/Berlin").convert(message(MSH_LOCAL, PID, summer))) == "2024-07-12T14:00:00+02:00"


def test_a_configured_zone_wins_over_msh7() -> None:
    tokyo_clock = MSH_LOCAL.replace("20240312141502", "20240312141502+0900")
    configured = Converter.load(default_tz="America/Chicago", host_tz="Europe/Berlin")
    assert _start(configured.convert(message(tokyo_clock, PID, PV1_ADMIT))) == "2024-03-12T14:00:00-05:00"  # CDT
    per_sender = Converter.load(sender_tz={"App|Fac": "Asia/Kolkata"}, default_tz="America/Chicago")
    assert _start(per_sender.convert(message(tokyo_clock, PID, PV1_ADMIT))) == "2024-03-12T14:00:00+05:30"


def test_provenance_recorded_is_the_local_msh7_in_the_senders_zone_not_utc() -> None:
    bundle = hosted("America/New_York").convert(message(MSH_LOCAL, PID, PV1_ADMIT))
    assert message_provenance(bundle)["recorded"] == "2024-03-12T14:15:02-04:00"


def test_instants_are_kept_when_the_zone_is_known() -> None:
    oru = MSH_LOCAL.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    bundle = hosted("Europe/Berlin").convert(message(oru, PID, OBR_ORU, "OBX|1|NM|GLU^Glucose^L||5.5|mmol/L|||||F"))
    assert only(bundle, "DiagnosticReport")["issued"] == "2024-03-12T15:30:00+01:00"


def test_with_no_zone_at_all_a_time_keeps_only_its_date() -> None:
    assert _start(converter().convert(message(MSH_LOCAL, PID, PV1_ADMIT))) == "2024-03-12"
