"""The children `make bench` starts (self-contained: nothing from tests/): the emulator,
the gateway and the bare baseline server, each on a free loopback port it logs, and what
the suite reads about them (/proc counters, the gateway's /metrics)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
KEY = "sc-" + hashlib.sha256(b"bench account").hexdigest()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The CPUs children run on (`python -m bench --pin`); empty: wherever the kernel puts them.
SERVER_CPUS: set[int] = set()


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
        await asyncio.sleep(0.002)
    raise RuntimeError(f"no {pattern!r} in the child's log within {within} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A /proc/PID/status memory figure (VmHWM: peak resident set; VmRSS: now) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Child:
    """A child process with its output in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.argv, self.log_path, self.env = list(argv), log_path, dict(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def started(self, waiting: Awaitable[T]) -> T:
        """`waiting` (for the child to be up); the child is killed if that fails, so a
        child that never comes up is not left running."""
        try:
            return await waiting
        except BaseException:
            self.kill()
            raise

    # Whether `--pin` puts it on the servers' CPUs (the emulator stays off them: it is the
    # upstream, not a server under test).
    pinned = True

    def spawn(self) -> None:
        cpus = SERVER_CPUS if self.pinned else set()
        with self.log_path.open("wb") as log:
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )

    def stop(self, within: float = 15.0) -> None:
        """SIGTERM, then kill past `within`."""
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


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "STABLECOG_"))},
        **extra,
    }


async def wait_serving(target: str, child: Child, within: float = 20.0) -> None:
    """Poll the health service until it says SERVING."""
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert child.process is not None
            if child.process.poll() is not None:
                raise RuntimeError(f"child exited at start:\n{child.log_path.read_text()}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.005)
    raise RuntimeError(f"not SERVING within {within} s:\n{child.log_path.read_text()}")


class Emulator(Child):
    """The bundled emulator: no rate limit, no account queue, plenty of credits."""

    pinned = False

    def __init__(self, log_path: Path, latency: float = 0.0) -> None:
        super().__init__(
            [
                sys.executable, "-m", "emulator", "--listen", "127.0.0.1:0",
                "--latency", str(latency), "--rate-limit", "0", "--queue-limit", "0",
                "--account", KEY, "--initial-credits", "1000000000",
            ],
            log_path,
            _env({}),
        )  # fmt: skip
        self.url = ""

    async def start(self) -> None:
        self.spawn()
        assert self.process is not None
        found = await line_in(
            self.log_path, r"listening on (http://127\.0\.0\.1:\d+)", self.process, 20.0
        )
        self.url = found.group(1)
        async with httpx.AsyncClient() as client:
            for _ in range(400):
                try:
                    if (await client.get(f"{self.url}/v1/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        raise RuntimeError("emulator did not start")

    async def set_latency(self, seconds: float) -> None:
        async with httpx.AsyncClient() as client:
            reply = await client.post(
                f"{self.url}/_emulator/config", json={"latency_seconds": seconds}
            )
            reply.raise_for_status()

    async def generation_count(self) -> int:
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{self.url}/_emulator/requests")
            reply.raise_for_status()
            return int(reply.json()["generation_count"])


UVLOOP_MAIN = [
    "-c",
    "import sys, uvloop; uvloop.install(); from gateway.__main__ import main; sys.exit(main())",
]


class GatewayProcess(Child):
    """One `python -m gateway` child on free loopback ports, as shipped (default settings)."""

    def __init__(
        self,
        upstream_url: str,
        log_path: Path,
        env: Mapping[str, str] = {},
        uvloop: bool = False,
        api_key: str | None = KEY,
    ) -> None:
        # With uvloop: its event loop policy installed before the gateway's asyncio.run.
        run = UVLOOP_MAIN if uvloop else ["-m", "gateway"]
        # api_key None: no configured key (each call carries its caller's own).
        key = {"STABLECOG_API_KEY": api_key} if api_key is not None else {}
        super().__init__(
            [sys.executable, *run],
            log_path,
            _env(
                {
                    "GATEWAY_LISTEN": "127.0.0.1:0",
                    "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
                    "STABLECOG_API_URL": upstream_url,
                    **key,
                    **dict(env),
                }
            ),
        )
        self.port = 0
        self.metrics_port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, within: float = 20.0) -> float:
        """Start; the seconds from spawn to its "gateway serving" line (logged once health
        says SERVING and the first reachability check is done), then checked SERVING."""
        self.spawn()
        assert self.process is not None
        serving = await self.started(
            line_in(self.log_path, r'^\{.*"gateway serving".*\}$', self.process, within)
        )
        seconds = time.perf_counter() - self.started_at
        line = json.loads(serving.group(0))
        self.port, self.metrics_port = int(line["grpc_port"]), int(line["metrics_port"])
        await self.started(wait_serving(self.target, self, within))
        return seconds

    async def counters(self) -> dict[str, float]:
        """grpc_server_handled_total of CreateGeneration by code, and the upstream
        requests made (stablecog_upstream_request_duration_seconds_count, summed)."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        out: dict[str, float] = {"upstream_requests": 0.0}
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total{") and "CreateGeneration" in line:
                code = re.search(r'grpc_code="(\w+)"', line)
                if code:
                    out[code.group(1)] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("stablecog_upstream_request_duration_seconds_count{"):
                out["upstream_requests"] += float(line.rsplit(" ", 1)[1])
        return out


class BareServer(Child):
    """bench.bare: the bare grpc.aio server returning fixed bytes."""

    def __init__(self, response_file: Path, log_path: Path) -> None:
        super().__init__(
            [sys.executable, "-m", "bench.bare", str(response_file)], log_path, _env({})
        )
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, within: float = 20.0) -> float:
        self.spawn()
        assert self.process is not None
        found = await self.started(
            line_in(self.log_path, r"listening on (\d+)", self.process, within)
        )
        seconds = time.perf_counter() - self.started_at
        self.port = int(found.group(1))
        await self.started(wait_serving(self.target, self, within))
        return seconds


class FloorServer(BareServer):
    """bench.floor: grpc.aio forwarding each call to the upstream with aiohttp, nothing
    else; or (`hits`) answering one request from a dict with a hit's least duties."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        Child.__init__(
            self,
            [sys.executable, "-m", "bench.floor", *argv],
            log_path,
            _env({"STABLECOG_API_KEY": KEY}),
        )
        self.port = 0

    @classmethod
    def forwarding(
        cls, upstream_url: str, body_file: Path, response_file: Path, log_path: Path
    ) -> FloorServer:
        return cls([upstream_url, str(body_file), str(response_file)], log_path)

    @classmethod
    def hits(cls, request_file: Path, response_file: Path, log_path: Path) -> FloorServer:
        return cls(["--hits", str(request_file), str(response_file)], log_path)

    async def counters(self) -> dict[str, float]:
        """As GatewayProcess.counters: the calls it answered (`OK`: forwarded with a 200,
        or hits) and those it failed (`FAILED`)."""
        async with grpc.aio.insecure_channel(self.target) as channel:
            reply = await channel.unary_unary("/stablecog.v1.GenerationService/Counts")(b"")
        counts = json.loads(reply)
        return {"OK": float(counts["ok"]), "FAILED": float(counts["failed"])}
