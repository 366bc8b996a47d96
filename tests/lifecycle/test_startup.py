"""The operator's first hour: a gateway that cannot start says which setting and why; one
that starts while the upstream or Redis does not answer serves anyway, says so once in a
warning, and exports their reachability (kept current by a recheck)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from emulator.server import Emulator
from gateway.app import Seams
from gateway.config import ConfigError
from gateway.reachability import RECHECK_SECONDS
from gateway.transport import AiohttpTransport
from tests.conftest import ACCOUNT_KEY, FakeClock, GatewayFactory
from tests.fixtures import CREATE, eventually
from tests.processes import ROOT, GatewayProcess, _child_env
from tests.services import RedisServer, refusing_port

REACHABLE = "stablecog_dependency_reachable"


def gateway_process(tmp_path: Path, **env: str) -> GatewayProcess:
    return GatewayProcess(
        {"STABLECOG_API_URL": "http://127.0.0.1:9", "STABLECOG_API_KEY": ACCOUNT_KEY, **env},
        tmp_path / "gateway.log",
    )


async def failed_start(gateway: GatewayProcess) -> str:
    """The gateway's output once it has exited at start (it must not serve)."""
    with pytest.raises(RuntimeError, match="exited with code"):
        await gateway.start(timeout=20)
    assert gateway.process is not None and gateway.process.returncode not in (0, None)
    assert "gateway serving" not in gateway.logs()
    return gateway.logs()


async def test_a_busy_grpc_port_names_the_setting_the_port_and_the_cause(
    tmp_path: Path, held_port: int
) -> None:
    gateway = gateway_process(tmp_path, GATEWAY_LISTEN=f"127.0.0.1:{held_port}")
    out = await failed_start(gateway)
    assert (
        f"stablecog-gateway: cannot start: cannot listen on --listen / GATEWAY_LISTEN "
        f"127.0.0.1:{held_port}: the port is already in use"
    ) in out


async def test_a_busy_metrics_port_names_the_setting_the_port_and_the_cause(
    tmp_path: Path, held_port: int
) -> None:
    gateway = gateway_process(tmp_path, GATEWAY_METRICS_LISTEN=f"127.0.0.1:{held_port}")
    out = await failed_start(gateway)
    assert (
        f"cannot listen on --metrics-listen / GATEWAY_METRICS_LISTEN 127.0.0.1:{held_port}: "
        "the port is already in use"
    ) in out
    assert "Errno" not in out


async def test_a_listen_host_that_is_not_local_is_named(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    gateway = gateway_process(tmp_path, GATEWAY_LISTEN="192.0.2.1:0")
    out = await failed_start(gateway)
    assert "cannot listen on --listen / GATEWAY_LISTEN 192.0.2.1:0: the host is not" in out


def test_a_bad_setting_stops_the_process_naming_flag_and_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=_child_env({"GATEWAY_CACHE_TTL": "abc"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "stablecog-gateway: invalid --cache-ttl / GATEWAY_CACHE_TTL: "
        "expected a positive number of seconds, got 'abc'"
    )


def test_a_bad_certificate_stops_the_process_naming_the_flag_and_the_cause(
    tmp_path: Path,
) -> None:
    (tmp_path / "server.crt").write_text("not a certificate\n")
    (tmp_path / "server.key").write_text("not a key\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=_child_env(
            {
                "GATEWAY_LISTEN": "127.0.0.1:0",
                "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
                "GATEWAY_TLS_CERT_FILE": str(tmp_path / "server.crt"),
                "GATEWAY_TLS_KEY_FILE": str(tmp_path / "server.key"),
            }
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "cannot start: invalid --tls-cert-file / GATEWAY_TLS_CERT_FILE" in done.stderr
    assert "holds no PEM certificate" in done.stderr
    assert "cannot listen on" not in done.stderr  # not blamed on the port any more


async def test_an_app_built_from_settings_checks_the_certificate_too(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    (tmp_path / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
    (tmp_path / "server.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match="invalid --tls-cert-file / GATEWAY_TLS_CERT_FILE"):
        await make_gateway(
            tls_cert_file=tmp_path / "server.crt", tls_key_file=tmp_path / "server.key"
        )


def metric(gateway: GatewayProcess, dependency: str) -> float | None:
    """The gateway's reachability gauge for `dependency`, read from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{REACHABLE}{{dependency="{dependency}"}} '):
            return float(line.split()[-1])
    return None


async def test_an_unreachable_upstream_is_a_warning_and_a_metric_not_a_refusal(
    tmp_path: Path,
) -> None:
    with refusing_port() as port:
        gateway = gateway_process(tmp_path, STABLECOG_API_URL=f"http://127.0.0.1:{port}")
        try:
            await gateway.start()  # returns once health says SERVING
            serving = await gateway.wait_for_log("gateway serving")
            assert serving["upstream_reachable"] is False
            assert serving["redis_reachable"] is None  # memory cache: no Redis to check
            warnings = [
                line
                for line in gateway.logs().splitlines()
                if f"upstream http://127.0.0.1:{port} is unreachable at start" in line
            ]
            assert len(warnings) == 1, gateway.logs()
            assert "serving anyway" in warnings[0] and '"level":"warning"' in warnings[0]
            assert metric(gateway, "upstream") == 0
            assert metric(gateway, "redis") is None
        finally:
            gateway.kill()


async def test_an_unreachable_redis_is_a_warning_at_start_not_at_the_first_call(
    tmp_path: Path, emulator: Emulator
) -> None:
    with refusing_port() as port:
        gateway = gateway_process(
            tmp_path,
            STABLECOG_API_URL=emulator.base_url,
            GATEWAY_CACHE="redis",
            GATEWAY_REDIS_URL=f"redis://user:hunter2@127.0.0.1:{port}/0",
        )
        try:
            await gateway.start()
            serving = await gateway.wait_for_log("gateway serving")
            assert (serving["upstream_reachable"], serving["redis_reachable"]) == (True, False)
            logs = gateway.logs()
            assert f"redis redis://127.0.0.1:{port}/0 is unreachable at start" in logs
            assert "hunter2" not in logs
            assert metric(gateway, "redis") == 0
            assert metric(gateway, "upstream") == 1
        finally:
            gateway.kill()


async def test_reachable_dependencies_are_exported_as_1(
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    for dependency in ("upstream", "redis"):
        assert app.registry.get_sample_value(REACHABLE, {"dependency": dependency}) == 1
    (serving,) = [r for r in caplog.records if r.getMessage() == "gateway serving"]
    assert (vars(serving)["upstream_reachable"], vars(serving)["redis_reachable"]) == (True, True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # The check is the upstream's free health endpoint: no key, no generation.
    (check,) = [r for r in emulator.requests if r.path == "/v1/health"]
    assert check.method == "GET" and not [r for r in emulator.requests if r.path == CREATE]


class Switch(httpx.AsyncBaseTransport):
    """The network to the upstream, cut while `up` is False (the outside world)."""

    def __init__(self) -> None:
        self.up = False
        self._inner = AiohttpTransport(max_connections=10)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_the_recheck_follows_the_upstream_coming_and_going(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock, network = FakeClock(), Switch()
    app = await make_gateway(Seams(upstream_transport=network, clock=clock))

    def reachable() -> float | None:
        return app.registry.get_sample_value(REACHABLE, {"dependency": "upstream"})

    def logged(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if text in r.getMessage()]

    async def recheck() -> None:
        # Once the recheck sleeps on the clock (it did not before, or has finished), move
        # the clock past it and wait until it has checked and sleeps again.
        await eventually(lambda: clock.sleepers == 1)
        clock.advance(RECHECK_SECONDS)
        await eventually(lambda: clock.sleepers == 1)

    assert reachable() == 0
    assert [r.levelno for r in logged("is unreachable at start")] == [logging.WARNING]

    network.up = True
    await recheck()
    assert reachable() == 1
    assert [r.levelno for r in logged("is reachable again")] == [logging.INFO]

    network.up = False
    await recheck()
    assert reachable() == 0
    (lost,) = logged("became unreachable")
    assert lost.levelno == logging.WARNING and "UNAVAILABLE" in lost.getMessage()
    await recheck()  # still down: the change is logged once, not at every check
    assert reachable() == 0
    assert len(logged("became unreachable")) == 1


async def test_a_redis_url_without_the_redis_cache_is_a_warning(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await make_gateway(cache="memory", redis_url="redis://127.0.0.1:6379/0")
    (warning,) = [r for r in caplog.records if "Redis is not used" in r.getMessage()]
    assert "--redis-url / GATEWAY_REDIS_URL" in warning.getMessage()
    assert "--cache / GATEWAY_CACHE is memory" in warning.getMessage()
