from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import Role, legacy_token_name, load_settings, parse_tokens, unknown_variables
from gateway.config.values import host_zone
from gateway.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HL7GW_REDIS_URL", "HL7GW_DATABASE_URL", "HL7GW_MLLP_PORT", "HL7GW_HTTP_PORT", "HL7GW_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.storage.embedded_redis
    assert (s.mllp_host, s.mllp_port, s.http_host, s.http_port) == ("127.0.0.1", 2575, "127.0.0.1", 8080)
    assert s.storage.database_url.startswith("sqlite:///") and s.storage.database_url.endswith("data/hl7gw.sqlite3")


def test_worker_processes_default_to_the_cores_at_most_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HL7GW_WORKER_PROCESSES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert load_settings().worker_processes == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert load_settings().worker_processes == 1
    monkeypatch.setenv("HL7GW_WORKER_PROCESSES", "6")
    assert load_settings().worker_processes == 6


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HL7GW_MLLP_PORT", "not-a-port"),
        ("HL7GW_HTTP_PORT", "70000"),
        ("HL7GW_REDIS_URL", "http://localhost"),
        ("HL7GW_API_TOKENS", "abc:superuser"),
        ("HL7GW_API_TOKENS", "no-role-here"),
        ("HL7GW_WORKER_THREADS", "0"),
        ("HL7GW_LOG_LEVEL", "VERBOSE"),
        ("HL7GW_LOG_FORMAT", "xml"),
        ("HL7GW_OUTAGE_MAX_BACKOFF_S", "0"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_tokens() -> None:
    # token:role entries are named by a digest; name:token:role entries by their name.
    entries = parse_tokens("a:reader, b:operator,alice:c:admin")
    assert [(e.name, e.token, e.role) for e in entries] == [
        (legacy_token_name("a"), "a", Role.reader),
        (legacy_token_name("b"), "b", Role.operator),
        ("alice", "c", Role.admin),
    ]
    # With two or more colons, the name is before the first, the role after the last; the token
    # between may itself contain colons.
    assert [(e.name, e.token) for e in parse_tokens("x:y:admin, ops:to:ken:operator")] == [
        ("x", "y"),
        ("ops", "to:ken"),
    ]


def test_log_level_is_a_setting_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HL7GW_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_log_format_is_text_unless_json_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HL7GW_LOG_FORMAT", raising=False)
    assert load_settings().logging.format == "text"
    monkeypatch.setenv("HL7GW_LOG_FORMAT", " JSON ")
    assert load_settings().logging.format == "json"


def test_misspelt_variables_are_named_with_the_closest_setting() -> None:
    environ = {
        "HL7GW_REDIS_ULR": "redis://x",
        "HL7GW_MLLP_PORT": "2575",
        "hl7gw_data_dir": "/data",  # settings are read in any case
        "HL7GW_TEST_DATABASE_URL": "postgresql://",  # the test suite's, not a setting, not a mistake
        "HL7GW_COMPLETELY_UNKNOWN": "1",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [("HL7GW_COMPLETELY_UNKNOWN", None), ("HL7GW_REDIS_ULR", "HL7GW_REDIS_URL")]


def test_sections_carry_the_variables_and_are_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HL7GW_MLLP_PORT", "3575")
    monkeypatch.setenv("HL7GW_ACCEPTED_PROCESSING_IDS", " p , t ")
    monkeypatch.setenv("HL7GW_UNSUPPORTED_TYPES", "accept")
    monkeypatch.setenv("HL7GW_SENDER_TZ", "LAB|MERCY=America/Chicago")
    monkeypatch.setenv("HL7GW_FHIR_SINKS", "hapi=http://fhir.example/fhir")
    s = load_settings()
    assert s.mllp.port == 3575 and s.mllp is s.mllp  # made once, then the same object
    assert s.intake.processing_ids == {"P", "T"} and not s.intake.reject_unsupported
    assert s.intake.honour_enhanced_mode
    assert s.conversion.sender_tz == {"LAB|MERCY": "America/Chicago"}
    assert [spec.name for spec in s.sinks.specs] == ["hapi"] and s.sinks.max_age_s == 3 * 86_400
    assert s.worker.threads == 64 and s.logging.level == "INFO"


def test_host_zone_is_told_by_tz_then_localtime(tmp_path: Path) -> None:
    zoneinfo = tmp_path / "usr/share/zoneinfo/America"
    zoneinfo.mkdir(parents=True)
    (zoneinfo / "Chicago").write_bytes(b"")
    etc = tmp_path / "etc"
    etc.mkdir()
    localtime = etc / "localtime"
    localtime.symlink_to(zoneinfo / "Chicago")
    assert host_zone({"TZ": ":Asia/Tokyo"}, localtime) == "Asia/Tokyo"
    assert host_zone({"TZ": "Not/AZone"}, localtime) == "America/Chicago"
    assert host_zone({}, localtime) == "America/Chicago"
    localtime.unlink()
    (etc / "timezone").write_text("Europe/Lisbon\n")
    assert host_zone({}, localtime) == "Europe/Lisbon"


def test_conversion_settings_carry_the_host_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Australia/Adelaide")
    assert load_settings().conversion.host_tz == "Australia/Adelaide"
