"""Site mappings (HL7GW_MAPPINGS_DIR) over the shipped ones, per sender, and the sender's time zone."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.convert.runtime.engine import Converter
from gateway.errors import ConfigError
from gateway.validate import validate_bundle
from tests.support.convert import message, message_provenance, only

MSH = "MSH|^~\\&|App|Fac|R|RF|20240701120000||ADT^A01^ADT_A01|1|P|2.5.1"
PID = "PID|1||123^^^H^MR||Doe^Jane||19800101|F"
ZPI = "ZPI|1|Main St Pharmacy|GOLD"
PV1 = "PV1|1|I|||||||||||||||||V1^^^H^VN|||||||||||||||||||||||||20240701110000"
PHARMACY = "http://hospital.example.org/fhir/StructureDefinition/preferred-pharmacy"
VIP = "http://mercy.example.org/fhir/StructureDefinition/vip-code"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The ZPI example of docs/mappings.md: a Z-segment mapped to a Patient extension, for every
    sender, and differently for LAB at MERCY."""
    root = tmp_path / "site"
    _write(
        root / "segments/ZPI_Patient.yaml",
        f"""\
segment: ZPI
resource: Patient
rules:
  - {{from: ZPI-2, to: "extension[+url={PHARMACY}].valueString"}}
""",
    )
    _write(
        root / "messages/_patient.yaml",
        """\
message: _patient
extends: _patient
resources:
  patient:
    add_include:
      - {segment: ZPI, map: "ZPI[Patient]"}
""",
    )
    _write(
        root / "senders/LAB@MERCY/segments/ZPI_Patient.yaml",
        f"""\
segment: ZPI
resource: Patient
rules:
  - {{from: ZPI-3, to: "extension[+url={VIP}].valueString"}}
""",
    )
    return root


def test_site_maps_its_z_segment(site: Path) -> None:
    converter = Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)
    conversion = converter.convert_with_report(message(MSH, PID, ZPI, PV1))
    validate_bundle(conversion.bundle)
    assert only(conversion.bundle, "Patient")["extension"] == [{"url": PHARMACY, "valueString": "Main St Pharmacy"}]
    assert conversion.unused_segments == []
    # Every shipped map still works, and the shipped maps alone leave ZPI unused.
    assert converter.supports("ORU", "R01")
    shipped = Converter.load(overlay_dir=None, default_tz=None, sender_tz=None).convert_with_report(
        message(MSH, PID, ZPI, PV1)
    )
    assert "extension" not in only(shipped.bundle, "Patient") and shipped.unused_segments == ["ZPI#3"]


def test_sender_maps_override_the_site(site: Path) -> None:
    converter = Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)
    bundle = converter.convert(message(MSH.replace("|App|Fac|", "|LAB|MERCY|"), PID, ZPI, PV1))
    assert only(bundle, "Patient")["extension"] == [{"url": VIP, "valueString": "GOLD"}]
    assert converter.supports("ADT", "A01", sender="LAB|MERCY")


def test_time_zone_default_and_per_sender(site: Path) -> None:
    converter = Converter.load(overlay_dir=site, default_tz="Europe/Berlin", sender_tz={"LAB|MERCY": "America/Chicago"})
    berlin = converter.convert(message(MSH, PID, PV1))
    assert only(berlin, "Encounter")["period"] == {"start": "2024-07-01T11:00:00+02:00"}  # summer time
    assert message_provenance(berlin)["recorded"] == "2024-07-01T12:00:00+02:00"
    winter = converter.convert(message(MSH, PID, PV1.replace("20240701110000", "20240115110000")))
    assert only(winter, "Encounter")["period"] == {"start": "2024-01-15T11:00:00+01:00"}
    chicago = converter.convert(message(MSH.replace("|App|Fac|", "|LAB|MERCY|"), PID, PV1))
    assert only(chicago, "Encounter")["period"] == {"start": "2024-07-01T11:00:00-05:00"}
    # A date stays a date, and an offset the sender gave is kept.
    patient = only(chicago, "Patient")
    assert patient["birthDate"] == "1980-01-01"
    given = converter.convert(message(MSH, PID, PV1.replace("20240701110000", "20240701110000-0300")))
    assert only(given, "Encounter")["period"] == {"start": "2024-07-01T11:00:00-03:00"}


def test_without_a_zone_times_without_offset_keep_their_date(site: Path) -> None:
    converter = Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)
    assert only(converter.convert(message(MSH, PID, PV1)), "Encounter")["period"] == {"start": "2024-07-01"}


def test_settings_supply_the_overlay_and_zones(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(mappings_dir=site, default_tz="Europe/Berlin", sender_tz="LAB|MERCY=America/Chicago")
    converter = Converter.configured(settings.conversion)
    bundle = converter.convert(message(MSH.replace("|App|Fac|", "|LAB|MERCY|"), PID, ZPI, PV1))
    assert only(bundle, "Encounter")["period"]["start"].endswith("-05:00")
    assert only(bundle, "Patient")["extension"][0]["url"] == VIP


def test_bad_overlays_are_config_errors(tmp_path: Path, site: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        Converter.load(overlay_dir=tmp_path / "nowhere", default_tz=None, sender_tz=None)
    (site / "senders/MERCY").mkdir(parents=True)
    with pytest.raises(ConfigError, match="APPLICATION@FACILITY"):
        Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)
    (site / "senders/MERCY").rmdir()
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Base'"):
        Converter.load(overlay_dir=site, default_tz="Mars/Base", sender_tz=None)
    _write(
        site / "segments/ZPI_Patient.yaml", "segment: ZPI\nresource: Patient\nrules:\n  - {from: ZPI-2, to: nickname}\n"
    )
    with pytest.raises(ConfigError, match=r"ZPI_Patient.yaml:4: .*Patient has no element 'nickname'"):
        Converter.load(overlay_dir=site, default_tz=None, sender_tz=None)
    with pytest.raises(ConfigError, match="HL7GW_SENDER_TZ"):
        load_settings(sender_tz="LAB=Europe/Berlin")
