"""Alerts, dashboard and runbook: every query parses and names only metrics and labels the service exports."""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest
import yaml

from tests.deploy.support import DASHBOARD, DEPLOY, DOCS, TARGET_LABELS, MetricCatalog, markdown_anchors

# Series from elsewhere that the rules may use.
EXTERNAL_METRICS = {
    "up": frozenset({"job"}),
    "kube_pod_container_status_last_terminated_exitcode": frozenset({"container"}),
}
SEVERITIES = {"critical", "warning", "info"}
# Grafana variables, replaced by representative values before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# What the dashboard must show (the panels the operations guide describes).
DASHBOARD_MUST_USE = {
    "ingestor_records_consumed_total",
    "ingestor_records_sent_total",
    "ingestor_api_call_records_sum",
    "ingestor_api_call_records_count",
    "ingestor_api_call_duration_seconds_bucket",
    "ingestor_api_calls_in_flight",
    "ingestor_buffered_records",
    "ingestor_consumer_lag",
    "ingestor_records_dead_lettered_total",
    "ingestor_api_calls_total",
    "ingestor_commits_total",
    "ingestor_last_commit_timestamp_seconds",
}
REQUIRED_ALERTS = {
    "IngestorConsumerLagGrowing",
    "IngestorDeadLettering",
    "IngestorThrottled",
    "IngestorCommitsStalled",
    "IngestorFatalError",
    "IngestorNotReady",
}


def rules() -> list[dict[str, Any]]:
    rule_file = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text(encoding="utf-8"))
    return [rule for group in rule_file["spec"]["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""
    board = dashboard()
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: expected label_values(selector, label), got {query!r}"
        queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def parse(where: str, expr: str) -> Any:
    try:
        return promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"{where}: not valid PromQL ({exc}): {expr}")


def check_names_and_labels(where: str, expr: str, catalog: MetricCatalog) -> set[str]:
    """Every selector names a known series and matches only its labels; aggregations group by known labels."""
    ast = parse(where, expr)
    selectors: list[Any] = []
    aggregations: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr):
            aggregations.append(node)

    promql_parser.walk(ast, visit)
    names = set()
    known_labels = set(TARGET_LABELS)
    for selector in selectors:
        name = selector.name
        assert name, f"{where}: select series by metric name: {expr}"
        if name.startswith("ingestor_"):
            assert name in catalog, f"{where}: {name} is not exported by ingestor.metrics.Metrics"
            labels = catalog.labels[name]
        else:
            assert name in EXTERNAL_METRICS, f"{where}: {name} is neither the service's nor an allowed external series"
            labels = EXTERNAL_METRICS[name]
        names.add(name)
        known_labels |= labels
        for matcher in selector.matchers.matchers:
            assert matcher.name in labels | TARGET_LABELS, f"{where}: {name} has no label {matcher.name!r}"
    for aggregation in aggregations:
        modifier = aggregation.modifier
        if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
            unknown = set(modifier.labels) - known_labels
            assert not unknown, f"{where}: grouping by {sorted(unknown)}, which no series in the query has"
    return names


def test_metric_catalog_includes_derived_series(metric_catalog: MetricCatalog) -> None:
    for name in (
        "ingestor_records_consumed_total",
        "ingestor_api_call_duration_seconds_bucket",
        "ingestor_api_call_duration_seconds_sum",
        "ingestor_api_call_records_count",
        "ingestor_ready",
    ):
        assert name in metric_catalog
    assert "le" in metric_catalog.labels["ingestor_api_call_duration_seconds_bucket"]


def test_catalog_check_rejects_unknown_names_and_labels(metric_catalog: MetricCatalog) -> None:
    with pytest.raises(AssertionError, match="not exported"):
        check_names_and_labels("t", "rate(ingestor_records_total[5m])", metric_catalog)
    with pytest.raises(AssertionError, match="no label"):
        check_names_and_labels("t", 'ingestor_api_calls_total{stage="x"}', metric_catalog)
    with pytest.raises(AssertionError, match="grouping by"):
        check_names_and_labels("t", "sum by (reason) (ingestor_records_sent_total)", metric_catalog)


# ---------------------------------------------------------------- alerts


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert", r.get("record")))
def test_rule_expression_uses_exported_metrics(rule: dict[str, Any], metric_catalog: MetricCatalog) -> None:
    names = check_names_and_labels(rule["alert"], rule["expr"], metric_catalog)
    assert any(n.startswith("ingestor_") for n in names) or names <= {"up"}


@pytest.mark.parametrize("alert", alerts(), ids=lambda r: r["alert"])
def test_alert_is_documented(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    runbook = annotations["runbook_url"]
    path, _, anchor = runbook.partition("#")
    assert path == "docs/operations.md" and anchor == alert["alert"].lower(), runbook
    assert anchor in markdown_anchors(DOCS.read_text(encoding="utf-8")), f"docs/operations.md has no section {anchor}"
    if "for" in alert:
        assert promql_parser.parse_duration(alert["for"]).total_seconds() > 0


def test_required_alerts_exist() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert set(names) >= REQUIRED_ALERTS, f"missing {REQUIRED_ALERTS - set(names)}"


def test_commit_stall_alert_matches_the_liveness_threshold() -> None:
    app = pytest.importorskip("ingestor.app", reason="ingestor/app.py not importable yet", exc_type=ImportError)
    (stall,) = [a for a in alerts() if a["alert"] == "IngestorCommitsStalled"]
    assert f"> {int(app.COMMIT_STALL_S)}" in stall["expr"]


# ---------------------------------------------------------------- dashboard


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= variables
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", f"panel {panel['title']!r}: use the datasource variable"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


@pytest.mark.parametrize("where,expr", dashboard_queries(), ids=lambda v: v if " " in v else None)
def test_dashboard_query_uses_exported_metrics(where: str, expr: str, metric_catalog: MetricCatalog) -> None:
    names = check_names_and_labels(where, substitute(expr), metric_catalog)
    assert names, f"{where}: no metric"


def test_dashboard_covers_the_service(metric_catalog: MetricCatalog) -> None:
    used: set[str] = set()
    for where, expr in dashboard_queries():
        used |= check_names_and_labels(where, substitute(expr), metric_catalog)
    assert used >= DASHBOARD_MUST_USE, f"the dashboard does not show {sorted(DASHBOARD_MUST_USE - used)}"


def test_dashboard_panels_filter_by_namespace_and_pod() -> None:
    for where, expr in dashboard_queries():
        if where.startswith("panel"):
            for selector in re.findall(r"ingestor_\w+(\{[^}]*\})?", expr):
                assert 'namespace=~"$namespace"' in selector and 'pod=~"$pod"' in selector, f"{where}: {expr}"


# ---------------------------------------------------------------- operations guide


def test_operations_guide_sections() -> None:
    text = DOCS.read_text(encoding="utf-8")
    anchors = markdown_anchors(text)
    assert "replaying-the-dead-letter-topic" in anchors
    replay = text.split("\n## Replaying the dead-letter topic\n", 1)[1]
    assert "ingestor dlq replay" in replay.split("\n## ", 1)[0]
    for needed in ("kustomize build", "eks.amazonaws.com/role-arn", "maxReplicaCount", "terminationGracePeriodSeconds"):
        assert needed in text, f"docs/operations.md should explain {needed}"
