"""Two gateway processes sharing one Redis keep one budget exactly: a burst five times the
budget, split across both, spends the budget upstream (the emulator's ledger) and not one
credit more; every other call is refused with a QuotaFailure before reaching the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2_grpc
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import call, request, upstream_calls
from tests.processes import GatewayProcess
from tests.services import RedisClusterServers, RedisServer
from tests.status import rich_error

BUDGET = 6


async def one_call(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        try:
            await stub.CreateGeneration(request(num_outputs=1), timeout=20)
        except grpc.aio.AioRpcError as error:
            found = rich_error(error)
            assert found.quota and found.quota[0].subject == "caller:search", found
            return f"{error.code().name} {found.info.reason if found.info else ''}"
    return "OK"


async def cached_call(target: str) -> str:
    """A seeded (cacheable) call; its `x-cache`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        _, cache = await call(stub, request(seed=5, num_outputs=1), timeout=20)
    return cache


@pytest.mark.parametrize("redis", ["one server", "3-node cluster"])
async def test_a_burst_across_two_gateways_spends_exactly_the_budget(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, policy_file: Path, redis: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    if redis == "one server":
        server: RedisServer = request.getfixturevalue("redis_server")
        shared = {"GATEWAY_REDIS_URL": server.url}
    else:  # Debian's redis-server, three nodes on loopback
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        shared = {"GATEWAY_REDIS_URL": cluster.url, "GATEWAY_REDIS_CLUSTER": "true"}
    env = {
        "GATEWAY_CACHE": "redis",
        **shared,
        "GATEWAY_REDIS_TIMEOUT": "2",
        "GATEWAY_BUDGETS": str(policy_file),
        "GATEWAY_CALLER": "search",
        "GATEWAY_UPSTREAM_RETRIES": "1",
    }
    gateways = [spawn(**env), spawn(**env)]
    await asyncio.gather(*(g.start() for g in gateways))
    # The cache shares the same Redis: a seeded call one gateway generated (1 credit) is a
    # hit on the other, free.
    assert await cached_call(gateways[0].target) == "miss"
    assert await cached_call(gateways[1].target) == "hit"
    emulator.set_latency(0.2)  # generations overlap: reservations race across both
    outcomes = await asyncio.gather(*(one_call(gateways[i % 2].target) for i in range(5 * BUDGET)))
    assert outcomes.count("OK") == BUDGET - 1
    assert outcomes.count("RESOURCE_EXHAUSTED BUDGET_EXHAUSTED") == 4 * BUDGET + 1
    assert INITIAL_CREDITS - emulator.balance(ACCOUNT_KEY) == BUDGET
    assert upstream_calls(emulator) == BUDGET  # the seeded call and BUDGET - 1 others
