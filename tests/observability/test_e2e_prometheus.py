"""End to end: a real Prometheus scrapes a real gateway every second while calls run
through it; what Prometheus stores must match what the gateway answered.

Prometheus runs on loopback on a port of its choosing (port 0, read from its log) with its
data in a temporary directory, is bounded in time and killed at teardown. Without the binary
the test skips loudly, unless CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway.account import account_fingerprint
from gateway.app import GatewayApp
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.observability import promql
from tests.observability.prometheus import SCRAPE_JOB, PrometheusServer, by_label, scalar
from tests.observability.workload import Ledger, run_workload

DEFAULT_CALLER = "e2e-default"
CREATE = 'grpc_method="CreateGeneration"'


@pytest.fixture
async def observed(
    make_gateway: GatewayFactory, tmp_path: Path
) -> AsyncIterator[tuple[GatewayApp, PrometheusServer]]:
    app = await make_gateway(caller=DEFAULT_CALLER)
    prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{app.metrics_port}")
    # Started off the event loop: the gateway in this loop must answer its scrapes.
    await asyncio.to_thread(prometheus.start)
    try:
        # Prometheus applies discovered targets every 5 s: wait for a first scrape, so the
        # calls below run while it scrapes and rate() has a sample from before them.
        async with httpx.AsyncClient(timeout=5.0) as http:
            up = await prometheus.wait_for(
                http, f'up{{job="{SCRAPE_JOB}"}}', lambda r: scalar(r) == 1, timeout=30.0
            )
            assert scalar(up) == 1, f"prometheus never scraped the gateway:\n{prometheus.log()}"
            # The label sets known up front are there, at zero, from the first scrape.
            before = await prometheus.query(http, f"grpc_server_handled_total{{{CREATE}}}")
            assert len(before) == len(grpc.StatusCode)
            assert {float(s["value"][1]) for s in before} == {0.0}
        yield app, prometheus
    finally:
        await asyncio.to_thread(prometheus.stop)


def counts(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {k: v for k, v in by_label(result, label).items() if v}


# How long a dashboard query may take to find data: Prometheus scrapes every second, so
# this is many scrapes past the two a rate() over a new series needs.
DASHBOARD_DATA_SECONDS = 20.0
# The titles of the dashboard's Budgets row.
BUDGET_PANELS = "Budget"


async def without_data(
    prometheus: PrometheusServer,
    http: httpx.AsyncClient,
    queries: Mapping[str, str],
    *,
    within: float,
) -> list[str]:
    """The names of the queries still without data once `within` seconds have passed
    (each is queried until it has some; a query error fails at once)."""
    waiting = dict(queries)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        for name, expr in list(waiting.items()):
            if await prometheus.query(http, expr):
                del waiting[name]
        if not waiting or asyncio.get_running_loop().time() > deadline:
            return list(waiting)
        await asyncio.sleep(0.5)


async def test_prometheus_agrees_with_what_the_gateway_answered(
    observed: tuple[GatewayApp, PrometheusServer], emulator: Emulator
) -> None:
    app, prometheus = observed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        ledger = await run_workload(channel, emulator, default_caller=DEFAULT_CALLER)
    calls = len(ledger.outcomes)
    assert ledger.ok(["hit", "miss", "coalesced", "bypass", "uncacheable"]), "no success at all"
    if app.cache is not None:
        # The seeded repeat and the concurrent identical calls avoided generations.
        assert ledger.credits_saved(), ledger.cache_results()

    async with httpx.AsyncClient(timeout=5.0) as http:

        async def settled(expr: str, expected: float) -> float | None:
            """The value once Prometheus has scraped it (or the last one after 20 s)."""
            result = await prometheus.wait_for(http, expr, lambda r: scalar(r) == expected)
            return scalar(result)

        async def settled_by(
            expr: str, label: str, expected: Mapping[str, float]
        ) -> dict[str, float]:
            result = await prometheus.wait_for(http, expr, lambda r: counts(r, label) == expected)
            return counts(result, label)

        # Every call was scraped: a scrape after the last call.
        assert await settled(f"sum(grpc_server_handled_total{{{CREATE}}})", calls) == calls
        assert await settled(f"sum(grpc_server_started_total{{{CREATE}}})", calls) == calls
        assert await settled(f"sum(grpc_server_handling_seconds_count{{{CREATE}}})", calls) == calls
        assert await settled("sum(stablecog_inflight_requests)", 0) == 0

        # Status codes, as the callers received them.
        codes = ledger.codes()
        assert await settled_by(
            f"sum by (grpc_code) (grpc_server_handled_total{{{CREATE}}})", "grpc_code", codes
        ) == dict(codes)
        # Every code is initialised, so rate() works from the first call of each.
        all_codes = await prometheus.query(http, f"count(grpc_server_handled_total{{{CREATE}}})")
        assert scalar(all_codes) == len(grpc.StatusCode)
        # Health checks ran during the workload and are not counted.
        assert (
            await prometheus.query(
                http, 'grpc_server_started_total{grpc_service="grpc.health.v1.Health"}'
            )
            == []
        )

        # Credits spent: num_outputs of successful calls that were not served by the cache.
        spent = ledger.credits_spent()
        assert await settled("sum(stablecog_credits_spent_total)", spent.total()) == spent.total()
        assert await settled_by(
            "sum by (caller) (stablecog_credits_spent_total)", "caller", spent
        ) == dict(spent)
        # Credits saved: num_outputs of cache hits and coalesced calls.
        saved = ledger.credits_saved()
        assert await settled("sum(stablecog_credits_saved_total)", saved.total()) == saved.total()
        assert await settled_by(
            "sum by (caller) (stablecog_credits_saved_total)", "caller", saved
        ) == dict(saved)

        generated, filtered = ledger.images_generated(), ledger.images_filtered()
        assert filtered >= 1
        assert await settled("sum(stablecog_images_generated_total)", generated) == generated
        assert await settled("sum(stablecog_images_filtered_total)", filtered) == filtered

        lowest = ledger.lowest_balance()
        account = account_fingerprint(ACCOUNT_KEY)
        assert (
            await settled(f'stablecog_credits_remaining{{account="{account}"}}', lowest) == lowest
        )

        # Cache decisions, for the results every call answers with (errors answer none).
        cache = {k: v for k, v in ledger.cache_results().items() if k in ("hit", "coalesced")}
        if app.cache is not None:
            found = await settled_by(
                'sum by (result) (stablecog_cache_requests_total{result=~"hit|coalesced"})',
                "result",
                cache,
            )
            assert found == cache

        failures = ledger.validation_failures()
        assert failures >= 3
        assert await settled("sum(stablecog_validation_failures_total)", failures) == failures

        reasons = ledger.upstream_reasons()

        def reasons_found(result: list[dict[str, Any]]) -> dict[str, float | None]:
            found = counts(result, "reason")
            return {r: found.get(r) for r in reasons}

        found_reasons = await prometheus.wait_for(
            http,
            "sum by (reason) (stablecog_upstream_errors_total)",
            lambda r: reasons_found(r) == dict(reasons),
        )
        assert reasons_found(found_reasons) == dict(reasons)

        # Every dashboard query is valid PromQL and finds data in this run. rate() and
        # increase() need two samples of a series in their window, and a series a call
        # created may have only one yet: poll each query until it has data, within a bound.
        # The Budgets row needs a budget policy: tests/budgets/test_budget_dashboard.py.
        queries = {
            f"{title}: {expr}": promql.grafana_to_promql(expr)
            for title, expr in promql.dashboard_exprs(promql.dashboard())
            if not title.startswith(BUDGET_PANELS)
        }
        empty = await without_data(prometheus, http, queries, within=DASHBOARD_DATA_SECONDS)
        assert not empty, (
            f"dashboard queries without data after {DASHBOARD_DATA_SECONDS} s:\n" + "\n".join(empty)
        )

        up = await prometheus.query(http, f'up{{job="{SCRAPE_JOB}"}}')
        assert scalar(up) == 1


def test_ledger_sums_are_consistent() -> None:
    # The workload's bookkeeping on its own: hits save, generations spend.
    from tests.observability.workload import Outcome

    ledger = Ledger(
        [
            Outcome(
                "a", grpc.StatusCode.OK, cache_result="miss", num_outputs=2, outputs_returned=1
            ),
            Outcome("a", grpc.StatusCode.OK, cache_result="hit", num_outputs=2, outputs_returned=2),
            Outcome("b", grpc.StatusCode.UNAVAILABLE, reason="RUNPOD_FAILED"),
        ]
    )
    assert ledger.credits_spent() == {"a": 2}
    assert ledger.credits_saved() == {"a": 2}
    assert ledger.images_filtered() == 1
    assert ledger.upstream_reasons() == {"RUNPOD_FAILED": 1}
