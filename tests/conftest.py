"""Shared fixtures: a real emulator over HTTP and a real grpc.aio gateway, both on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from emulator.config import EmulatorConfig
from emulator.server import Emulator
from gateway import logs
from gateway._gen.stablecog.v1 import generation_pb2_grpc
from gateway.app import GatewayApp, Seams
from gateway.config import Settings
from tests.processes import GatewayProcess
from tests.services import RedisClusterServers, RedisServer

ACCOUNT_KEY = "sc-" + hashlib.sha256(b"tests account").hexdigest()
OTHER_KEY = "sc-" + hashlib.sha256(b"tests other account").hexdigest()
INITIAL_CREDITS = 1000


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(
        EmulatorConfig(
            latency_seconds=0.0,
            rate_limit_per_second=0,
            queue_limit=0,
            initial_credits=INITIAL_CREDITS,
        )
    )
    await emu.start(host="127.0.0.1", port=0)
    emu.add_account(ACCOUNT_KEY, INITIAL_CREDITS)
    emu.add_account(OTHER_KEY, INITIAL_CREDITS)
    try:
        yield emu
    finally:
        await emu.stop()


GatewayFactory = Callable[..., Awaitable[GatewayApp]]


@pytest.fixture
def configured_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """gateway.logs.configure for one test (its writer on the captured stderr), then
    pytest's own handlers back on the root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("INFO")
    try:
        yield
    finally:
        logs.stop()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
async def make_gateway(emulator: Emulator) -> AsyncIterator[GatewayFactory]:
    """Start gateways on free loopback ports; each is stopped at teardown."""
    started: list[GatewayApp] = []

    async def factory(seams: Seams | None = None, **overrides: Any) -> GatewayApp:
        settings = Settings(
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            upstream_url=emulator.base_url,
            api_key=ACCOUNT_KEY,
            grace_period=5.0,
            # The emulator answers in milliseconds; the production floor (1 s) would refuse
            # the short deadlines tests use to cut calls mid-generation.
            min_generation_deadline=0.05,
            # One try: tests of the error table see each upstream answer as it is; the
            # retry tests (tests/gateway/test_retries.py) turn retries on.
            upstream_retries=1,
            # No breaker: tests of the error table send failures in a row on purpose; the
            # breaker's tests (tests/gateway/test_circuit.py) turn it on.
            circuit_failures=0,
        )
        app = GatewayApp(replace(settings, **overrides), seams)
        await app.start()
        started.append(app)
        return app

    try:
        yield factory
    finally:
        for app in started:
            await app.stop(grace=1.0)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> GatewayApp:
    return await make_gateway()


@pytest.fixture
async def channel(gateway: GatewayApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> generation_pb2_grpc.GenerationServiceStub:
    return generation_pb2_grpc.GenerationServiceStub(channel)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def spawn(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Callable[..., GatewayProcess]]:
    """Gateway processes against the emulator with the test account's key; killed by
    process id at teardown."""
    started: list[GatewayProcess] = []

    def factory(**env: str) -> GatewayProcess:
        process = GatewayProcess(
            {"STABLECOG_API_URL": emulator.base_url, "STABLECOG_API_KEY": ACCOUNT_KEY, **env},
            tmp_path / f"gateway-{len(started)}.log",
        )
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.kill()


class FakeClock:
    """A gateway.clock.Clock that tests move by hand. `sleep` waits until the clock is
    advanced past its wake-up time, so no test waits on real time to order events."""

    def __init__(self, now: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = now
        self._wall_offset = wall - now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + max(seconds, 0.0), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock."""
        return sum(1 for _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper that is due."""
        self.now += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self.now]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.now]
        for _, future in due:
            if not future.done():
                future.set_result(None)
