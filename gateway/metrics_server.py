"""The Prometheus endpoint: `GET /metrics` in the text format, on its own small aiohttp server."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_PATH = "/metrics"


class MetricsServer:
    """Serves one registry; `port` is the bound port once started (listen on port 0 in tests)."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self._registry = registry
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
