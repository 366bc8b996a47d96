"""The gateway as a child process for `make bench` (self-contained: nothing from tests/)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


async def line_in(
    log_path: Path, pattern: str, process: subprocess.Popen[bytes], within: float
) -> re.Match[str]:
    """The first line of a child's log that matches `pattern` (children bind port 0 and log
    the port they got, so no port is chosen here and re-bound there)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            found = re.search(pattern, line)
            if found:
                return found
        if process.poll() is not None:
            raise RuntimeError(f"child exited at start:\n{log_path.read_text()}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no {pattern!r} in the child's log within {within} s")


class GatewayProcess:
    """One `python -m gateway` child on free loopback ports, logs captured to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = 0  # known once started
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "STABLECOG_"))},
            "GATEWAY_LISTEN": "127.0.0.1:0",
            "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, within: float = 20.0) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        serving = await line_in(self.log_path, r'^\{.*"gateway serving".*\}$', self.process, within)
        self.port = int(json.loads(serving.group(0))["grpc_port"])
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited at start:\n{self.log_path.read_text()}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway not SERVING within {within} s:\n{self.log_path.read_text()}")

    def stop(self, within: float = 15.0) -> None:
        """SIGTERM (the gateway drains and flushes its spans), then kill past `within`."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
