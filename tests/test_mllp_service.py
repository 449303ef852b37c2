"""Listener settings: HL7GW_* variables become limits, intake rules and TLS, or fail naming the variable."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.mllp.limits import Limits
from gateway.services import listener as service


def test_defaults() -> None:
    settings = load_settings()
    assert service.limits_from(settings) == Limits()
    rules = service.rules_from(settings, None)
    assert rules.processing_ids == {"P", "T", "D"}
    assert {"2.1", "2.3.1", "2.5.1", "2.8.2"} <= rules.versions and "2.9" not in rules.versions
    assert rules.reject_unsupported and settings.dedup_window_s == 7 * 86_400
    assert not settings.mllp_commit_acks and not settings.mllp_require_trailing_cr


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "HL7GW_MLLP_MAX_MESSAGE_BYTES": "2048",
        "HL7GW_MLLP_FRAME_TIMEOUT_S": "5",
        "HL7GW_MLLP_IDLE_TIMEOUT_S": "0",
        "HL7GW_MLLP_MAX_CONNECTIONS": "7",
        "HL7GW_MLLP_MAX_CONNECTIONS_PER_PEER": "3",
        "HL7GW_MLLP_ALLOWED_PEERS": " 10.1.0.0/16, 192.0.2.7,2001:db8::/32 ,10.1.0.0/16",
        "HL7GW_MLLP_REQUIRE_TRAILING_CR": "true",
        "HL7GW_ACCEPTED_PROCESSING_IDS": "p",
        "HL7GW_ACCEPTED_VERSIONS": " 2.5.1 , 2.9",
        "HL7GW_UNSUPPORTED_TYPES": "accept",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    networks = tuple(ipaddress.ip_network(n) for n in ("10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32"))
    assert service.limits_from(settings) == Limits(
        2048, 5.0, 0.0, 7, True, max_connections_per_peer=3, allowed_peers=networks
    )
    rules = service.rules_from(settings, lambda c, t: False)
    assert rules.processing_ids == {"P"} and rules.versions == {"2.5.1", "2.9"} and not rules.reject_unsupported


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HL7GW_MLLP_MAX_MESSAGE_BYTES", "10"),
        ("HL7GW_MLLP_FRAME_TIMEOUT_S", "0"),
        ("HL7GW_MLLP_MAX_CONNECTIONS", "0"),
        ("HL7GW_MLLP_MAX_CONNECTIONS_PER_PEER", "0"),
        ("HL7GW_MLLP_ALLOWED_PEERS", "10.0.0.0/33"),
        ("HL7GW_MLLP_ALLOWED_PEERS", "hospital.example.org"),
        ("HL7GW_MLLP_ALLOWED_PEERS", "10.1.2.3/24"),
        ("HL7GW_MLLP_ALLOWED_PEERS", " , "),
        ("HL7GW_DEDUP_WINDOW_S", "-1"),
        ("HL7GW_ACCEPTED_VERSIONS", "2.5,two"),
        ("HL7GW_ACCEPTED_PROCESSING_IDS", "P;T"),
        ("HL7GW_UNSUPPORTED_TYPES", "ignore"),
        ("HL7GW_MLLP_TLS_KEY", "/tmp/key.pem"),
        ("HL7GW_MLLP_TLS_CLIENT_CA", "/tmp/ca.pem"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_missing_tls_files_stop_the_listener_at_start(tmp_path: Path) -> None:
    settings = load_settings(mllp_tls_cert=tmp_path / "cert.pem")
    with pytest.raises(ConfigError, match="HL7GW_MLLP_TLS_CERT"):
        service.build(settings, "redis://127.0.0.1:1/0", service.rules_from(settings, None))


def test_ack_mode_original_answers_aa_even_when_msh15_asks_for_enhanced_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.mllp.triage import Triage
    from tests.conftest import sample

    frame = sample("v2-to-fhir-ig/ADT_A01.hl7")  # MSH-15 AL, MSH-16 NE: enhanced mode
    standard = Triage(service.rules_from(load_settings(), None)).decide(frame)
    assert standard.mode.enhanced and standard.mode.code("AA") == "CA"

    monkeypatch.setenv("HL7GW_ACK_MODE", "original")
    original = Triage(service.rules_from(load_settings(), None)).decide(frame)
    assert not original.mode.enhanced and original.mode.code("AA") == "AA"

    monkeypatch.setenv("HL7GW_ACK_MODE", "enhanced-please")
    with pytest.raises(ConfigError, match="HL7GW_ACK_MODE"):
        load_settings()
