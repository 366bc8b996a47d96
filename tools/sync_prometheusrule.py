"""Write k8s/monitoring/prometheusrule.yaml: alerts.yaml wrapped as a PrometheusRule.

Kustomize cannot place a plain file under a resource's `spec`, so the wrapper is generated
and committed, and a test fails when it drifts. Run `make k8s-sync` (this script) after
changing alerts.yaml; `--check` only reports (`make lint` runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MONITORING = Path(__file__).resolve().parents[1] / "k8s" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"

HEADER = """\
# Generated from alerts.yaml by tools/sync_prometheusrule.py: do not edit by hand.
# The rules live in alerts.yaml, a plain Prometheus rules file (promtool check rules).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: stablecog-gateway
  labels:
    app.kubernetes.io/name: stablecog-gateway
    app.kubernetes.io/component: gateway
spec:
"""


def render(alerts_text: str) -> str:
    """The PrometheusRule whose spec is the rules file, its comments kept."""
    lines = alerts_text.splitlines()
    if any(line.strip() in ("---", "...") for line in lines):
        raise ValueError("alerts.yaml must be a single YAML document (no '---' or '...')")
    if any(line.startswith("\t") for line in lines):
        raise ValueError("alerts.yaml must indent with spaces")
    # Shifting every line by the same amount keeps the YAML's meaning, block scalars included.
    body = "".join(f"  {line}\n" if line.strip() else "\n" for line in lines)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    wanted = render(ALERTS.read_text(encoding="utf-8"))
    current = PROMETHEUS_RULE.read_text(encoding="utf-8") if PROMETHEUS_RULE.exists() else ""
    if current == wanted:
        return 0
    if args.check:
        print(f"{PROMETHEUS_RULE} is out of date: run make k8s-sync")
        return 1
    PROMETHEUS_RULE.write_text(wanted, encoding="utf-8")
    print(f"wrote {PROMETHEUS_RULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
