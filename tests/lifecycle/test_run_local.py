"""`make run` (scripts/run-local.sh): it says a process is ready only when that process's
own log says so, names the address that is taken, and stops what it started.

The script is run as it is, with the emulator (no STABLECOG_API_KEY), every address on
loopback; each run is bounded in time and stopped by its process id.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from tests.processes import ROOT, _child_env

SCRIPT = ROOT / "scripts" / "run-local.sh"
SERVING = re.compile(r"stablecog-gateway is serving on 127\.0\.0\.1:(\d+) ")
RUN_TIMEOUT = 60.0


def _script_env(**env: str) -> dict[str, str]:
    if not (ROOT / ".venv" / "bin" / "stablecog-gateway").exists():
        message = ".venv/bin/stablecog-gateway is missing (make run and make test create it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(f"SKIPPED LOUDLY: {message}")
    return _child_env(
        {
            "GATEWAY_LISTEN": "127.0.0.1:0",
            "GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
            "EMULATOR_LISTEN": "127.0.0.1:0",
            **env,
        }
    )


@asynccontextmanager
async def run_local(env: Mapping[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """scripts/run-local.sh in a session of its own; stopped (SIGTERM to its process id,
    then its session's processes killed if it did not stop them) when the block ends."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        cwd=ROOT,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)  # its session: pgid == its pid
                await process.wait()


async def run_to_exit(env: Mapping[str, str]) -> tuple[int, str]:
    async with run_local(env) as process:
        assert process.stdout is not None
        out = await asyncio.wait_for(process.stdout.read(), timeout=RUN_TIMEOUT)
        code = await asyncio.wait_for(process.wait(), timeout=RUN_TIMEOUT)
    return code, out.decode(errors="replace")


@pytest.fixture
async def other_gateway() -> AsyncIterator[int]:
    """What the issue met: another gRPC server holding the port, answering health checks
    with SERVING. (Its port is busy for the gateway: grpc binds without SO_REUSEPORT.)"""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port
    finally:
        await server.stop(grace=None)


async def test_a_port_held_by_another_healthy_server_is_named_and_never_called_serving(
    other_gateway: int,
) -> None:
    code, out = await run_to_exit(_script_env(GATEWAY_LISTEN=f"127.0.0.1:{other_gateway}"))
    assert code != 0, out
    assert "is serving" not in out
    assert (
        f"make run: cannot listen on --listen / GATEWAY_LISTEN 127.0.0.1:{other_gateway}: "
        "the port is already in use"
    ) in out
    assert "make run: the gateway failed to start" in out


async def test_a_busy_metrics_port_is_named(held_port: int) -> None:
    code, out = await run_to_exit(_script_env(GATEWAY_METRICS_LISTEN=f"127.0.0.1:{held_port}"))
    assert code != 0, out
    assert "is serving" not in out
    assert f"--metrics-listen / GATEWAY_METRICS_LISTEN 127.0.0.1:{held_port}" in out


async def test_a_busy_emulator_port_is_named_with_emulator_listen(held_port: int) -> None:
    code, out = await run_to_exit(_script_env(EMULATOR_LISTEN=f"127.0.0.1:{held_port}"))
    assert code != 0, out
    assert "is serving" not in out
    assert "make run: the emulator failed to start" in out
    assert f"127.0.0.1:{held_port}: address already in use" in out
    assert "EMULATOR_LISTEN" in out
    assert "gateway serving" not in out  # the gateway was never started


async def test_it_serves_on_the_port_it_got_and_stops_what_it_started() -> None:
    async with run_local(_script_env()) as process:
        assert process.stdout is not None
        seen: list[str] = []

        async def banner() -> int:
            assert process.stdout is not None
            while line := (await process.stdout.readline()).decode(errors="replace"):
                seen.append(line)
                if found := SERVING.search(line):
                    return int(found.group(1))
            raise AssertionError("the script ended without serving:\n" + "".join(seen))

        port = await asyncio.wait_for(banner(), timeout=RUN_TIMEOUT)
        emulator_url = next(
            m.group(1)
            for m in map(re.compile(r"listening on (http://\S+)").search, seen)
            if m is not None
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            response = await stub.CreateGeneration(
                generation_pb2.GenerationRequest(prompt="make run", seed=7, num_outputs=1),
                timeout=30,
            )
        assert response.outputs[0].url.startswith(emulator_url)

        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), timeout=RUN_TIMEOUT)
        assert await asyncio.wait_for(process.wait(), timeout=RUN_TIMEOUT) == 0
    out = "".join(seen) + rest.decode(errors="replace")
    # The gateway drained and stopped before the emulator, and both are gone.
    assert out.index('"message":"gateway stopped"') < out.index("emulator: stopping"), out
    for address in (f"127.0.0.1:{port}", emulator_url.removeprefix("http://")):
        host, _, number = address.rpartition(":")
        with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(number))):
            pass


async def test_a_log_level_that_hides_the_ready_line_is_refused_at_once() -> None:
    code, out = await run_to_exit(_script_env(GATEWAY_LOG_LEVEL="warning"))
    assert code == 2, out
    assert "GATEWAY_LOG_LEVEL=warning hides the 'gateway serving' line" in out
    assert "is serving" not in out and "starting the Stablecog emulator" not in out
