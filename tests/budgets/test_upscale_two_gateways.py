"""Two gateway processes sharing one Redis keep one budget for upscales too: a burst of
three times the budget, split across both, spends the budget upstream (the emulator's
ledger) and not one credit more; every other call is refused with a QuotaFailure before
reaching the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import request
from tests.processes import GatewayProcess
from tests.services import RedisServer
from tests.status import rich_error

BUDGET = 6  # the policy's `search` (tests/budgets/conftest.py)
UPSCALE = "/v1/image/upscale/create"


async def one_upscale(target: str, url: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        try:
            await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=url), timeout=20)
        except grpc.aio.AioRpcError as error:
            found = rich_error(error)
            assert found.quota and found.quota[0].subject == "caller:search", found
            return f"{error.code().name} {found.info.reason if found.info else ''}"
    return "OK"


async def test_an_upscale_burst_across_two_gateways_spends_exactly_the_budget(
    spawn: Callable[..., GatewayProcess],
    emulator: Emulator,
    policy_file: Path,
    redis_server: RedisServer,
) -> None:
    env = {
        "GATEWAY_CACHE": "redis",
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_REDIS_TIMEOUT": "2",
        "GATEWAY_BUDGETS": str(policy_file),
        "GATEWAY_CALLER": "search",
        "GATEWAY_UPSTREAM_RETRIES": "1",
    }
    gateways = [spawn(**env), spawn(**env)]
    await asyncio.gather(*(g.start() for g in gateways))
    async with grpc.aio.insecure_channel(gateways[0].target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        generated = await stub.CreateGeneration(request(num_outputs=1, width=256, height=256))
    url = generated.outputs[0].url  # an image URL: upscales of it are never cached
    emulator.set_latency(0.2)  # upscales overlap: reservations race across both
    outcomes = await asyncio.gather(
        *(one_upscale(gateways[i % 2].target, url) for i in range(3 * BUDGET))
    )
    assert outcomes.count("OK") == BUDGET - 1
    assert outcomes.count("RESOURCE_EXHAUSTED BUDGET_EXHAUSTED") == 2 * BUDGET + 1
    assert INITIAL_CREDITS - emulator.balance(ACCOUNT_KEY) == BUDGET
    assert sum(1 for r in emulator.requests if r.path == UPSCALE) == BUDGET - 1
