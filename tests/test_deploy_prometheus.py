"""deploy/: the Prometheus alerting rules and the Grafana dashboard speak the metric catalogue.

promtool (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks the rules, runs their
unit tests (deploy/prometheus/alerts.test.yml: each alert fires on the series that should raise it
and stays quiet on the others) and parses every dashboard query. Without promtool those tests
skip; the checks in Python run always: every ``hl7gw_*`` name in a rule or panel is in the
catalogue, every alert has a severity, a summary, a description and a runbook anchor that
docs/observability.md has, and annotations quote no label that could carry PHI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hl7gw.json"
DOCS = ROOT / "docs" / "observability.md"


@pytest.fixture(scope="module")
def catalogue(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every metric the gateway exports (name as scraped -> type): the recorder's instruments in
    gateway/metrics/catalogue.py and what a real scrape-time collector reads from a real Redis."""
    import redis
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.keys import Keys
    from gateway.metrics import catalogue as instruments
    from gateway.metrics.collector import GatewayCollector, ScrapeSources

    found: dict[str, str] = {}

    def add(name: str, kind: str) -> None:
        found[name + "_total" if kind == "counter" else name] = kind

    for value in vars(instruments).values():
        if isinstance(value, MetricWrapperBase):
            add(value._name, value._type)
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"hl7gw-test-deploy-{uuid.uuid4().hex[:8]}")
    client.hset(keys.sender_last_seen(), "LAB|HOSP", int(time.time() * 1000))
    try:
        sources = ScrapeSources(
            keys=keys,
            redis_client=client,
            sinks=(("lab", "sink.lab"),),
            heartbeat_timeout_ms=15_000,
            breaker_threshold=5,
            silence_s=3600,
            sender_silence_s={"LAB|HOSP": 600},
            data_dir=tmp_path_factory.mktemp("data"),
            open_dead_letters=lambda: 0,
            version="test",
        )
        for family in GatewayCollector(sources).collect():
            add(family.name, family.type)
    finally:
        client.delete(keys.sender_last_seen())
        client.close()
    return found


#: Labels an annotation may quote: none of them can hold PHI.
SAFE_LABELS = {"sender", "queue", "sink", "stage", "error_type", "err_code", "instance", "job"}
SEVERITIES = {"critical", "warning", "info"}
_METRIC = re.compile(r"\bhl7gw_[a-z0-9_]+")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert [group["name"] for group in groups] == ["hl7gw"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, rows' nested panels included."""
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def unknown_metrics(expr: str, catalogue: dict[str, str]) -> set[str]:
    """The ``hl7gw_*`` names in ``expr`` that are not catalogue metrics (or a histogram's series)."""
    unknown = set()
    for name in _METRIC.findall(expr):
        base = next((name.removesuffix(s) for s in _HISTOGRAM_SERIES if name.endswith(s)), None)
        if name in catalogue or (base is not None and catalogue.get(base) == "histogram"):
            continue
        unknown.add(name)
    return unknown


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a document's headings."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_unknown_metrics_finds_a_misspelt_name(catalogue: dict[str, str]) -> None:
    assert unknown_metrics("rate(hl7gw_messages_recieved_total[5m])", catalogue) == {"hl7gw_messages_recieved_total"}
    assert unknown_metrics("hl7gw_queue_depth_bucket", catalogue) == {"hl7gw_queue_depth_bucket"}
    assert unknown_metrics("rate(hl7gw_stage_duration_seconds_bucket[5m]) / up{job='hl7gw'}", catalogue) == set()


def test_alert_rules_use_only_catalogue_metrics(catalogue: dict[str, str]) -> None:
    used = {rule["alert"]: unknown_metrics(rule["expr"], catalogue) for rule in alert_rules()}
    assert {alert: names for alert, names in used.items() if names} == {}


def test_every_alert_says_how_bad_what_and_where_to_read() -> None:
    rules = alert_rules()
    anchors = github_anchors(DOCS.read_text())
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        path, _, anchor = annotations["runbook"].partition("#")
        assert path == "docs/observability.md" and anchor in anchors, (rule["alert"], annotations["runbook"])
        quoted = set(re.findall(r"\$labels\.(\w+)", annotations["summary"] + annotations["description"]))
        assert quoted <= SAFE_LABELS, (rule["alert"], quoted - SAFE_LABELS)


def test_every_alert_has_its_runbook_section_and_a_unit_test() -> None:
    """docs/observability.md explains each alert; alerts.test.yml makes each fire and stay quiet."""
    docs = DOCS.read_text()
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    for rule in alert_rules():
        assert rule["alert"] in docs, rule["alert"]
        assert rule["alert"] in fires, f"no promtool test makes {rule['alert']} fire"
        assert rule["alert"] in quiet, f"no promtool test shows {rule['alert']} quiet"


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] == "hl7gw"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert {"sender", "sink", "job"} <= set(variables)
    # Senders are "APP|FAC": Grafana escapes regex characters only in multi-value variables.
    assert variables["sender"]["multi"] and variables["sink"]["multi"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_uses_only_catalogue_metrics_and_shows_them_all(catalogue: dict[str, str]) -> None:
    exprs = dashboard_exprs()
    assert {title: unknown_metrics(expr, catalogue) for title, expr in exprs if unknown_metrics(expr, catalogue)} == {}
    shown = {name for _, expr in exprs for name in _METRIC.findall(expr)}
    shown |= {name.removesuffix(s) for name in shown for s in _HISTOGRAM_SERIES if name.endswith(s)}
    assert set(catalogue) - shown == set()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run does)")
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = run(promtool(), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run(promtool(), "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, its Grafana variables filled in, as a recording rule promtool must parse."""
    tool = promtool()
    fill = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$job": ".*",
        "$sender": ".*",
        "$sink": ".*",
    }
    rules = []
    for number, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in fill.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_fails_on_a_broken_rule(tmp_path: Path) -> None:
    """The promtool tests above can fail: a rule with a syntax error is refused."""
    tool = promtool()
    broken = RULES.read_text().replace("> 300", "> > 300", 1)
    assert broken != RULES.read_text()
    path = tmp_path / "alerts.yml"
    path.write_text(broken)
    assert run(tool, "check", "rules", path).returncode != 0
