"""HL7GW_FHIR_SINKS: JSON and compact spellings, and loud failures naming the problem."""

from __future__ import annotations

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.sinkspec import SinkSpec, parse_sinks


def test_compact_syntax() -> None:
    sinks = parse_sinks(
        "hapi=https://hapi.example/fhir/;auth=Bearer s3cr3t;timeout=2.5, lab=http://lab:8080/fhir;mode=put"
    )

    assert sinks == (
        SinkSpec("hapi", "https://hapi.example/fhir", "transaction", "Bearer s3cr3t", 2.5, 4),
        SinkSpec("lab", "http://lab:8080/fhir", "put", None, 10.0, 4),
    )
    assert sinks[0].queue == "sink.hapi" and sinks[0].stage == "deliver:hapi"


def test_json_syntax() -> None:
    sinks = parse_sinks('[{"name": "hapi", "url": "http://h/fhir", "mode": "put", "concurrency": 2}]')
    assert sinks == (SinkSpec("hapi", "http://h/fhir", "put", None, 10.0, 2),)
    assert parse_sinks('{"name": "one", "url": "http://h"}') == (SinkSpec("one", "http://h"),)
    assert parse_sinks("  ") == ()


def test_credentials_are_not_printed() -> None:
    (sink,) = parse_sinks("hapi=http://h;auth=Bearer s3cr3t")
    assert "s3cr3t" not in repr(sink) and "<set>" in repr(sink)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("hapi", "is not name=url"),
        ("hapi=ftp://h", "must be an http:// or https:// base URL"),
        ("Hapi=http://h", "name 'Hapi' must be"),
        ("hapi=http://h;mode=batch", "mode 'batch' must be transaction or put"),
        ("hapi=http://h;colour=red", "unknown option 'colour'"),
        ("hapi=http://h;timeout", "option 'timeout' is not key=value"),
        ("hapi=http://h;timeout=0", "timeout must be more than 0"),
        ("hapi=http://h;concurrency=x", "concurrency an integer"),
        ("a=http://h, a=http://i", "sink name 'a' is used twice"),
        ("[1]", "sink #1 is not an object"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_values_name_the_problem(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_sinks(value)
    with pytest.raises(ConfigError, match="HL7GW_FHIR_SINKS"):
        load_settings(fhir_sinks=value)


def test_settings_expose_the_sinks() -> None:
    settings = load_settings(fhir_sinks="a=http://h", sink_max_age_s=60)
    assert [s.name for s in settings.sinks.specs] == ["a"] and settings.sinks.max_age_s == 60
    assert load_settings().sinks.specs == ()
    with pytest.raises(ConfigError, match="HL7GW_SINK_MAX_AGE_S"):
        load_settings(sink_max_age_s=8 * 86_400)
