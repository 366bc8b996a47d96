"""The Prometheus endpoint: `GET /metrics` in the text format, on its own small aiohttp server."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

METRICS_PATH = "/metrics"


class WithoutCreated:
    """A view of a registry without the `_created` series: they double the series count and
    no panel or alert uses them. (prometheus_client's own switch for this,
    `disable_created_metrics()`, is process-wide.)"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class MetricsServer:
    """Serves one registry; `port` is the bound port once started (listen on port 0 in tests)."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = WithoutCreated(registry)
        host, _, port = listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        # No access log: Prometheus scrapes every few seconds.
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])

    async def stop(self) -> None:
        await self._runner.cleanup()
