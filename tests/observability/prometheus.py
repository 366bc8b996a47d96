"""A private Prometheus server for tests: loopback only, a temporary directory, bounded
start-up, killed at teardown. Queried through its HTTP API.

It listens on 127.0.0.1 port 0; the port it got is read from its own log (JSON lines, at
info level, the web server's `"msg":"Listening on","address":"127.0.0.1:PORT"`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.processes import wait_for_line
from tests.services import require_binary

SCRAPE_JOB = "stablecog-gateway"

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


class PrometheusServer:
    """`prometheus` scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.binary = require_binary("prometheus")
        self.port: int | None = None  # known once started
        self.workdir = workdir
        self.target = target
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("prometheus's port is known once start() has returned")
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(CONFIG.format(job=SCRAPE_JOB, target=self.target))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    "--storage.tsdb.retention.time=1h",
                    "--web.listen-address=127.0.0.1:0",
                    "--log.level=info",  # the "Listening on" line is at info
                    "--log.format=json",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        try:
            self.port = wait_for_line(
                self.log_path,
                _listening_port,
                process=self.process,
                timeout=timeout,
                what="prometheus listening",
            )
        except RuntimeError:
            self.stop()
            raise
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited at start:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus was not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    async def query(self, client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; raises on a query error."""
        answer = await client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = answer.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(
        self,
        client: httpx.AsyncClient,
        expr: str,
        done: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 20.0,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `done(result)` or the timeout; return the last result."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.query(client, expr)
            if done(result) or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.25)


def _listening_port(line: str) -> int | None:
    """The port on prometheus's web server "Listening on" log line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("msg") != "Listening on":
        return None
    return int(str(entry["address"]).rsplit(":", 1)[1])


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """{label value: sample value} of an instant vector."""
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def scalar(result: list[dict[str, Any]]) -> float | None:
    """The value of a one-sample vector; None when empty."""
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])
