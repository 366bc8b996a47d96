"""The dashboard's Budgets row against a real Prometheus scraping a gateway with budgets:
every query is valid PromQL and finds data, and the used share is what was spent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.budgets.test_budgets_service import outcome
from tests.conftest import GatewayFactory
from tests.observability import promql
from tests.observability.prometheus import SCRAPE_JOB, PrometheusServer, by_label, scalar
from tests.observability.test_e2e_prometheus import (
    BUDGET_PANELS,
    DASHBOARD_DATA_SECONDS,
    without_data,
)


async def test_the_budget_panels_show_the_budget(
    make_gateway: GatewayFactory, tmp_path: Path, policy_file: Path
) -> None:
    app = await make_gateway(caller="search", budgets=policy_file)
    prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{app.metrics_port}")
    await asyncio.to_thread(prometheus.start)
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            up = await prometheus.wait_for(
                http, f'up{{job="{SCRAPE_JOB}"}}', lambda r: scalar(r) == 1, timeout=30.0
            )
            assert scalar(up) == 1, prometheus.log()
            assert [await outcome(app, num_outputs=3) for _ in range(3)] == [
                "OK", "OK", "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED",
            ]  # fmt: skip
            queries = {
                f"{title}: {expr}": promql.grafana_to_promql(expr)
                for title, expr in promql.dashboard_exprs(promql.dashboard())
                if title.startswith(BUDGET_PANELS)
            }
            assert len(queries) == 7
            empty = await without_data(prometheus, http, queries, within=DASHBOARD_DATA_SECONDS)
            assert not empty, empty
            used = next(e for t, e in queries.items() if t.startswith("Budget used"))
            result = await prometheus.wait_for(
                http, used, lambda r: by_label(r, "caller").get("search") == 1.0
            )
            assert by_label(result, "caller") == {"search": 1.0, "batch": 0.0}  # 6 of 6 credits
    finally:
        await asyncio.to_thread(prometheus.stop)
