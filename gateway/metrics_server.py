"""The Prometheus endpoint: `GET /metrics` in the text format, on its own small aiohttp server."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

from gateway.config import named
from gateway.listen import cannot_listen, reason, split

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
        self._listen = listen
        self._host, self._port = split(listen)
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        # No access log: Prometheus scrapes every few seconds.
        self._runner = web.AppRunner(app, access_log=None)
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        # OpenMetrics when the scraper asks for it: it carries the latency exemplars
        # (trace ids); the classic text format cannot.
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body = openmetrics.generate_latest(self._registry)  # type: ignore[no-untyped-call]
            return web.Response(
                body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST}
            )
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise cannot_listen(named("metrics_listen"), self._listen, reason(error)) from None
        address = self._runner.addresses[0]
        self.port = int(address[1])

    async def stop(self) -> None:
        await self._runner.cleanup()
