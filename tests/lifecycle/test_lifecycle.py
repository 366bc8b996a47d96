"""Gateway processes: graceful drain on SIGTERM, key rotation, shared Redis coalescing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emulator.server import Emulator
from gateway.account import account_fingerprint
from tests.conftest import ACCOUNT_KEY, OTHER_KEY, GatewayFactory, sha256
from tests.fixtures import CREATE, Stub, call, request_with, upstream_calls, upstream_requests
from tests.processes import GatewayProcess
from tests.services import RedisServer
from tests.status import rich_error

request = request_with(num_outputs=1)


async def test_sigterm_drains_calls_in_flight(
    spawn: Callable[..., GatewayProcess], emulator: Emulator
) -> None:
    emulator.set_latency(2.0)
    gateway = spawn(GATEWAY_GRACE_PERIOD="20")
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = Stub(channel)
        in_flight = [
            asyncio.ensure_future(stub.CreateGeneration(request(prompt=f"picture {i}"), timeout=30))
            for i in range(50)
        ]
        await emulator.wait_for_requests(CREATE, 50)  # every call has reached the upstream
        assert upstream_calls(emulator) == 50

        gateway.terminate()
        # Logged once health says NOT_SERVING and new calls are refused.
        await gateway.wait_for_log("draining")
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "stablecog.v1.GenerationService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateGeneration(request(prompt="too late"), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        info = rich_error(refused.value).info
        assert info is not None and info.reason == "GATEWAY_DRAINING"

        responses = await asyncio.gather(*in_flight)
    assert all(len(r.outputs) == 1 for r in responses)
    assert await gateway.wait(timeout=20) == 0
    assert upstream_calls(emulator) == 50
    assert "gateway stopped" in gateway.logs()


async def test_key_file_rotation_without_restart(
    make_gateway: GatewayFactory, emulator: Emulator, tmp_path: Path
) -> None:
    # Like a mounted Secret: the file is replaced through a symlink swap.
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "..v1").mkdir()
    (secret_dir / "..v1" / "api-key").write_text(ACCOUNT_KEY + "\n")
    (secret_dir / "..data").symlink_to("..v1")
    key_file = secret_dir / "api-key"
    key_file.symlink_to("..data/api-key")

    emulator.set_latency(0.05)
    app = await make_gateway(api_key=None, api_key_file=key_file)
    failures: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = Stub(channel)

        async def keep_calling() -> int:
            made = 0
            while not stop.is_set():
                try:
                    await stub.CreateGeneration(request(), timeout=10)
                except grpc.aio.AioRpcError as error:
                    failures.append(error.code())
                made += 1
            return made

        workers = [asyncio.ensure_future(keep_calling()) for _ in range(4)]
        await emulator.wait_for_requests(CREATE, 8)  # calls made with the first key
        (secret_dir / "..v2").mkdir()
        (secret_dir / "..v2" / "api-key").write_text(OTHER_KEY + "\n")
        (secret_dir / "..data_tmp").symlink_to("..v2")
        os.replace(secret_dir / "..data_tmp", secret_dir / "..data")
        rotated_at = upstream_calls(emulator)
        # Past the (at most 4) calls in flight during the swap, 8 more made after it.
        await emulator.wait_for_requests(CREATE, rotated_at + 4 + 8)
        stop.set()
        made = sum(await asyncio.gather(*workers))

        await stub.CreateGeneration(request(), timeout=10)
    assert failures == []
    assert made > 8
    # The old key's balance series is gone; the new key's is there.
    balance = "stablecog_credits_remaining"
    assert (
        app.registry.get_sample_value(balance, {"account": account_fingerprint(ACCOUNT_KEY)})
        is None
    )
    assert app.registry.get_sample_value(balance, {"account": account_fingerprint(OTHER_KEY)})
    tokens = [r.token_sha256 for r in upstream_requests(emulator)]
    assert tokens[0] == sha256(ACCOUNT_KEY)
    assert tokens[-1] == sha256(OTHER_KEY)
    # Calls in flight during the swap may finish with either key; afterwards only the new.
    later = tokens[rotated_at + 4 :]
    assert later and set(later) == {sha256(OTHER_KEY)}


async def test_two_gateway_processes_coalesce_through_redis(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(1.0)
    env = {"GATEWAY_CACHE": "redis", "GATEWAY_REDIS_URL": redis_server.url}
    gateways = [spawn(**env), spawn(**env)]
    await asyncio.gather(*(g.start() for g in gateways))
    channels = [grpc.aio.insecure_channel(g.target) for g in gateways]
    try:
        answers = await asyncio.gather(
            *(
                call(Stub(channel), request(seed=2024, num_outputs=2), timeout=30)
                for channel in channels
                for _ in range(10)
            )
        )
    finally:
        for channel in channels:
            await channel.close()
    responses = [response for response, _ in answers]
    results = [cache for _, cache in answers]
    assert upstream_calls(emulator) == 1
    assert results.count("miss") == 1
    assert all(list(r.outputs) == list(responses[0].outputs) for r in responses)
    for gateway in gateways:
        gateway.terminate()
        assert await gateway.wait(timeout=15) == 0


async def test_bad_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    gateway = GatewayProcess({"GATEWAY_UPSTREAM_TIMEOUT": "soon"}, tmp_path / "bad.log")
    with pytest.raises(RuntimeError, match="GATEWAY_UPSTREAM_TIMEOUT"):
        await gateway.start(timeout=10)
    assert gateway.process is not None and gateway.process.returncode == 2


async def test_a_busy_port_fails_at_start(
    spawn: Callable[..., GatewayProcess], make_gateway: GatewayFactory
) -> None:
    running = await make_gateway()
    second = spawn(GATEWAY_LISTEN=f"127.0.0.1:{running.grpc_port}")
    with pytest.raises(RuntimeError, match="cannot listen on --listen / GATEWAY_LISTEN"):
        await second.start(timeout=10)
    assert second.process is not None and second.process.returncode == 1
