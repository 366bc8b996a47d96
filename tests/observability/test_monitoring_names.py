"""The dashboard and the alerts use only metrics the gateway exports, and the dashboard
shows every metric the gateway exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.budget_metrics import BudgetMetrics
from gateway.budget_policy import BudgetPolicy
from gateway.budgets import StaticPolicy
from gateway.metrics import GatewayMetrics
from tests.observability import promql

# Prometheus's own series, written for every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})


def exported() -> dict[str, set[str]]:
    metrics = GatewayMetrics(CollectorRegistry(), default_caller="unknown", max_callers=5)
    BudgetMetrics(metrics.registry, StaticPolicy(BudgetPolicy()), default_caller="unknown")
    return promql.exported_names(metrics.registry)


def dashboard_names() -> dict[str, set[str]]:
    return {
        f"{title}: {expr}": promql.metric_names(expr)
        for title, expr in promql.dashboard_exprs(promql.dashboard())
    }


def alert_names() -> dict[str, set[str]]:
    return {rule["alert"]: promql.metric_names(rule["expr"]) for rule in promql.alert_rules()}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job=~"(.+/)?stablecog-gateway"} == 0', {"up"}),
        ("absent(up{job='x'})", {"up"}),
        ('sum by (le, grpc_code) (rate(a_bucket{x="}{"}[5m]))', {"a_bucket"}),
        ("sum(rate(a_total[$__rate_interval])) by (caller) * 3600", {"a_total"}),
        ("a / ignoring (grpc_code) group_left () sum(b)", {"a", "b"}),
        ("a / on(x) group_left(y) b and bool c unless d or e offset 5m", set("abcde")),
        ("predict_linear((min by (account) (c))[6h:5m], 24 * 3600) < 0", {"c"}),
        ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m]))) > 1e3", {"h_bucket"}),
        ("rate(ns:recorded_metric[5m]) > Inf", {"ns:recorded_metric"}),
    ],
)
def test_metric_names_reads_promql(expr: str, names: set[str]) -> None:
    assert promql.metric_names(expr) == names


def test_variable_queries_are_read() -> None:
    assert promql.variable_expr('label_values(m{namespace=~"$namespace"}, pod)') == (
        'm{namespace=~"$namespace"}'
    )
    assert promql.variable_expr("label_values(m, namespace)") == "m"


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    known = set().union(*exported().values()) | PROMETHEUS_SERIES
    used = {**dashboard_names(), **alert_names()}
    assert all(used.values()), [where for where, names in used.items() if not names]
    unknown = {where: names - known for where, names in used.items() if names - known}
    assert not unknown, f"metrics not exported by the gateway: {unknown}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    on_dashboard = set().union(*dashboard_names().values())
    missing = sorted(family for family, names in exported().items() if not names & on_dashboard)
    assert not missing, f"exported but on no dashboard panel: {missing}"


def test_dashboard_has_the_template_variables_and_one_datasource() -> None:
    board = promql.dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "caller"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in promql.panels(board):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every panel follows the namespace and pod selectors.
            assert 'namespace=~"$namespace"' in target["expr"], panel["title"]
            assert 'pod=~"$pod"' in target["expr"], panel["title"]


def test_caller_metrics_follow_the_caller_variable() -> None:
    for title, expr in promql.dashboard_exprs(promql.dashboard()):
        if title.startswith("variable"):
            continue
        for name in promql.metric_names(expr):
            if name.startswith(("stablecog_credits_spent", "stablecog_credits_saved")) or (
                name.startswith("stablecog_images_")
            ):
                assert 'caller=~"$caller"' in expr, title
