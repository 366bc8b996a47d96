"""Just enough PromQL reading to list the metric names an expression selects, and the
expressions of the dashboard and the alert rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

MONITORING = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"
DASHBOARD = MONITORING / "dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
ALERTS_TEST = MONITORING / "alerts_test.yaml"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*(?:,\s*[\w]+\s*)?\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords and labels excluded)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def variable_expr(query: str) -> str | None:
    """The selector inside a Grafana `label_values(selector, label)` variable query."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return None
    return match.group(1) or None


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panels(panel))
        else:
            found.append(panel)
    return found


def dashboard_exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target and every query variable."""
    found = [
        (panel.get("title", ""), target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        selector = variable_expr(text)
        assert selector is not None, f"variable {variable['name']}: unexpected query {text!r}"
        found.append((f"variable {variable['name']}", selector))
    return found


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def exported_names(registry: CollectorRegistry) -> dict[str, set[str]]:
    """{family: the sample names a query may use} for every collector in a registry."""
    families: dict[str, set[str]] = {}
    for metric in registry.collect():
        if metric.type == "counter":
            families[metric.name] = {f"{metric.name}_total"}
        elif metric.type == "histogram":
            families[metric.name] = {f"{metric.name}{s}" for s in ("_bucket", "_count", "_sum")}
        elif metric.type == "summary":
            families[metric.name] = {metric.name, f"{metric.name}_count", f"{metric.name}_sum"}
        else:
            families[metric.name] = {metric.name}
    return families


def grafana_to_promql(expr: str, *, rate_interval: str = "1m", range_: str = "10m") -> str:
    """A dashboard expression with Grafana's variables replaced by values Prometheus takes."""
    for variable in ("namespace", "pod", "caller"):
        expr = expr.replace(f"${variable}", ".*").replace(f"${{{variable}}}", ".*")
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", range_)
    )
