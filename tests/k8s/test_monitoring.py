"""k8s/monitoring: the PodMonitor, the PrometheusRule and the Grafana dashboard ConfigMap.

PodMonitor and PrometheusRule are Prometheus Operator CRDs, outside kubernetes-validate's
core schemas, so their structure is checked here, against the fields of monitoring.coreos.com/v1
that the manifests use.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.k8s.manifests import (
    MONITORING,
    VARIANTS,
    Doc,
    Variant,
    gateway_containers,
    ident,
    render,
    selector_matches,
)
from tools import sync_prometheusrule

API_VERSION = "monitoring.coreos.com/v1"
# kubectl apply (client side) keeps the whole object in an annotation limited to 256 KiB.
MAX_DASHBOARD_BYTES = 200_000
DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")

PODMONITOR_SPEC_KEYS = {
    "selector",
    "podMetricsEndpoints",
    "namespaceSelector",
    "jobLabel",
    "podTargetLabels",
    "sampleLimit",
}
ENDPOINT_KEYS = {
    "port",
    "portNumber",
    "path",
    "interval",
    "scrapeTimeout",
    "scheme",
    "honorLabels",
    "relabelings",
    "metricRelabelings",
}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "query_offset", "labels"}


def monitoring_objects(kind: str) -> list[Doc]:
    return [d for d in render(MONITORING) if d["kind"] == kind]


def check_metadata(doc: Doc) -> None:
    assert doc["apiVersion"] == API_VERSION, f"{ident(doc)}: apiVersion {doc['apiVersion']}"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{ident(doc)}: {set(doc)}"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_monitoring_renders_exactly_the_expected_objects() -> None:
    kinds = sorted(ident(d) for d in render(MONITORING))
    assert kinds == [
        "ConfigMap/stablecog-gateway-dashboard",
        "PodMonitor/stablecog-gateway",
        "PrometheusRule/stablecog-gateway",
    ]


def test_podmonitor_structure() -> None:
    (monitor,) = monitoring_objects("PodMonitor")
    check_metadata(monitor)
    spec = monitor["spec"]
    assert set(spec) <= PODMONITOR_SPEC_KEYS, (
        f"unknown PodMonitor fields {set(spec) - PODMONITOR_SPEC_KEYS}"
    )
    selector = spec["selector"]
    assert selector.get("matchLabels") or selector.get("matchExpressions"), (
        "an empty selector would scrape every pod in the namespace"
    )
    assert spec["podMetricsEndpoints"], "no podMetricsEndpoints"
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= ENDPOINT_KEYS, f"unknown endpoint fields {set(endpoint)}"
        assert isinstance(endpoint.get("port"), str), "scrape the gateway's named metrics port"
        assert endpoint.get("path", "/metrics") == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert DURATION.match(endpoint[key]), f"{key}: {endpoint[key]!r}"


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_podmonitor_scrapes_the_gateway_metrics_port(variant: Variant) -> None:
    (monitor,) = monitoring_objects("PodMonitor")
    wanted_ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    docs = render(variant)
    gateways = list(gateway_containers(docs))
    for workload, template, _, container in gateways:
        labels = template["metadata"].get("labels") or {}
        assert selector_matches(monitor["spec"]["selector"], labels), (
            f"{variant.name}: the PodMonitor's selector misses {ident(workload)}'s pods "
            f"(labels {labels})"
        )
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or ()}
        assert wanted_ports <= set(ports), (
            f"{variant.name}: the PodMonitor scrapes port {sorted(wanted_ports)}, "
            f"the gateway container declares {sorted(ports)}"
        )
    # Nothing else: other pods (the application, Redis) are not the gateway's to scrape.
    with_gateway = {ident(w) for w, _, _, _ in gateways}
    for doc in docs:
        template = doc["spec"].get("template") if doc["kind"] == "Deployment" else None
        if template and ident(doc) not in with_gateway:
            labels = template["metadata"].get("labels") or {}
            assert not selector_matches(monitor["spec"]["selector"], labels), ident(doc)


def test_prometheusrule_structure() -> None:
    (rule,) = monitoring_objects("PrometheusRule")
    check_metadata(rule)
    assert set(rule["spec"]) == {"groups"}, f"PrometheusRule spec keys {set(rule['spec'])}"
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), f"duplicate group names {names}"
    for group in rule["spec"]["groups"]:
        assert set(group) <= GROUP_KEYS, f"group {group['name']}: unknown {set(group) - GROUP_KEYS}"
        assert isinstance(group.get("rules"), list), f"group {group['name']}: rules list"
        for rule_ in group["rules"]:
            where = f"group {group['name']} rule {rule_.get('alert') or rule_.get('record')}"
            assert set(rule_) <= RULE_KEYS, f"{where}: unknown keys {set(rule_) - RULE_KEYS}"
            assert ("alert" in rule_) != ("record" in rule_), f"{where}: alert xor record"
            assert isinstance(rule_.get("expr"), (str, int)), f"{where}: expr"
            for key in ("for", "keep_firing_for"):
                if key in rule_:
                    assert DURATION.match(str(rule_[key])), f"{where}: {key} {rule_[key]!r}"
            for key in ("labels", "annotations"):
                values = rule_.get(key) or {}
                assert all(isinstance(v, str) for v in values.values()), f"{where}: {key}"


def test_prometheusrule_is_alerts_yaml() -> None:
    (rule,) = monitoring_objects("PrometheusRule")
    alerts = yaml.safe_load(sync_prometheusrule.ALERTS.read_text())
    assert set(alerts) == {"groups"}, "alerts.yaml must hold only `groups` (a rules file)"
    assert rule["spec"] == alerts


def test_prometheusrule_yaml_is_up_to_date() -> None:
    wanted = sync_prometheusrule.render(sync_prometheusrule.ALERTS.read_text())
    assert sync_prometheusrule.PROMETHEUS_RULE.read_text() == wanted, (
        "k8s/monitoring/prometheusrule.yaml is out of date with alerts.yaml: run make k8s-sync"
    )


def test_render_keeps_the_yaml_meaning() -> None:
    text = (
        "# rules\ngroups:\n  - name: g\n    rules:\n      - alert: A\n"
        "        expr: |\n          up == 0\n\n          # not a comment\n"
        "        annotations:\n          summary: >-\n            folded\n            text\n"
    )
    wrapped = yaml.safe_load(sync_prometheusrule.render(text))
    assert wrapped["spec"] == yaml.safe_load(text)
    with pytest.raises(ValueError, match="single YAML document"):
        sync_prometheusrule.render("---\ngroups: []\n")


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    (config_map,) = monitoring_objects("ConfigMap")
    assert config_map["metadata"]["labels"].get("grafana_dashboard") == "1"
    # No hash suffix: a renamed ConfigMap would leave the old one, and a duplicate uid.
    assert config_map["metadata"]["name"] == "stablecog-gateway-dashboard"
    (name, text) = next(iter(config_map["data"].items()))
    assert name.endswith(".json"), f"the sidecar loads *.json keys, not {name}"
    source = (sync_prometheusrule.MONITORING / "dashboard.json").read_text()
    assert text == source
    dashboard = json.loads(text)
    assert dashboard.get("title") and dashboard.get("uid"), "a dashboard needs a title and uid"
    assert len(text.encode()) < MAX_DASHBOARD_BYTES, (
        f"dashboard.json is {len(text.encode())} bytes: kubectl's client-side apply keeps a "
        "copy in a 256 KiB annotation; shrink it or document `kubectl apply --server-side`"
    )


def test_job_matchers_match_the_podmonitor_job() -> None:
    # The Prometheus Operator names a PodMonitor's scrape job <namespace>/<PodMonitor name>;
    # rules and panels that select on `job` must keep matching when the PodMonitor is renamed.
    (monitor,) = monitoring_objects("PodMonitor")
    job = f"some-namespace/{monitor['metadata']['name']}"
    texts = {
        "alerts.yaml": sync_prometheusrule.ALERTS.read_text(),
        "dashboard.json": json.dumps(
            json.loads((sync_prometheusrule.MONITORING / "dashboard.json").read_text())
        ),
    }
    for source, text in texts.items():
        text = text.replace('\\"', '"')
        for operator, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', text):
            matches = re.fullmatch(value, job) if operator == "=~" else value == job
            assert matches, f"{source}: job{operator}{value!r} does not match the job {job!r}"
