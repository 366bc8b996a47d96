"""Two gateway processes on a real 3-node Redis Cluster (`--cache redis --redis-cluster`)
share everything they keep in Redis as on one server: flights (one generation for a
seeded call sent to both, the second COALESCED), cache entries (a hit across replicas),
the newest balance, and idempotency records (a repeat on the other gateway waits and is
replayed, a key reused for another request is refused, a keyed upscale is replayed).
The budget burst on a cluster is tests/budgets/test_two_gateways.py.

Events are ordered by what the test can observe: the emulator's received requests, and
the Cluster's own MONITOR feed (the second gateway's failed lease, its claim of the
record); the emulator's latency only keeps the first call running meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import CREATE, Stub, call, call_trailers, eventually, request, upstream_calls
from tests.processes import GatewayProcess
from tests.services import RedisClusterServers, RedisMonitor
from tests.status import rich_error

UPSCALE = "/v1/image/upscale/create"
CacheResult = generation_pb2.CacheResult


async def two_gateways(
    spawn: Callable[..., GatewayProcess], cluster: RedisClusterServers
) -> list[GatewayProcess]:
    env = {
        "GATEWAY_CACHE": "redis",
        "GATEWAY_REDIS_URL": cluster.url,
        "GATEWAY_REDIS_CLUSTER": "true",
        "GATEWAY_REDIS_TIMEOUT": "2",
    }
    gateways = [spawn(**env), spawn(**env)]
    await asyncio.gather(*(g.start() for g in gateways))
    return gateways


def keyed(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


async def test_the_cache_on_a_cluster_coalesces_across_gateways_and_shares_entries_and_balances(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, redis_cluster: RedisClusterServers
) -> None:
    gateways = await two_gateways(spawn, redis_cluster)
    seeded = request(seed=11, num_outputs=1)
    async with (
        grpc.aio.insecure_channel(gateways[0].target) as one,
        grpc.aio.insecure_channel(gateways[1].target) as two,
    ):
        with RedisMonitor(redis_cluster.ports) as monitor:
            emulator.set_latency(3.0)
            leader = asyncio.ensure_future(call(Stub(one), seeded, timeout=30))
            await emulator.wait_for_requests(CREATE, 1)  # the first gateway holds the lease
            waiter = asyncio.ensure_future(call(Stub(two), seeded, timeout=30))
            # The second gateway tried the lease and found it taken: it waits.
            await eventually(lambda: monitor.count('"SET"', ':lock"', '"NX"') >= 2)
            (made, made_cache), (shared, shared_cache) = await asyncio.gather(leader, waiter)
        assert (made_cache, shared_cache) == ("miss", "coalesced")
        assert list(shared.outputs) == list(made.outputs)
        assert upstream_calls(emulator) == 1

        emulator.set_latency(0.0)
        other = request(seed=12, num_outputs=1)
        first, first_cache = await call(Stub(one), other)
        # The other gateway pays 3 credits: the newest balance, seen by the second gateway.
        paid, _ = await call(Stub(two), request(num_outputs=3))
        hit, hit_cache = await call(Stub(two), other)  # an entry the first gateway stored
        also, also_cache = await call(Stub(one), seeded)  # ... and one the waiter shared
    assert (first_cache, hit_cache, also_cache) == ("miss", "hit", "hit")
    assert list(hit.outputs) == list(first.outputs) and list(also.outputs) == list(made.outputs)
    assert first.remaining_credits == INITIAL_CREDITS - 2
    assert paid.remaining_credits == INITIAL_CREDITS - 5
    assert hit.remaining_credits == also.remaining_credits == INITIAL_CREDITS - 5
    assert upstream_calls(emulator) == 3
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 5


async def test_idempotency_records_on_a_cluster_replay_across_gateways(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, redis_cluster: RedisClusterServers
) -> None:
    gateways = await two_gateways(spawn, redis_cluster)
    keyed_request = request(num_outputs=2)
    async with (
        grpc.aio.insecure_channel(gateways[0].target) as one,
        grpc.aio.insecure_channel(gateways[1].target) as two,
    ):
        with RedisMonitor(redis_cluster.ports) as monitor:
            emulator.set_latency(3.0)
            first = asyncio.ensure_future(
                call_trailers(Stub(one), keyed_request, metadata=keyed("order-1"), timeout=30)
            )
            await emulator.wait_for_requests(CREATE, 1)
            repeat = asyncio.ensure_future(
                call_trailers(Stub(two), keyed_request, metadata=keyed("order-1"), timeout=30)
            )
            # Both claimed the record (the claim script names the void mark); the second
            # found it running and waits for its outcome.
            await eventually(lambda: monitor.count('"EVAL"', ":idem:{", ":void:") >= 2)
            (made, made_trailers), (waited, waited_trailers) = await asyncio.gather(first, repeat)
        emulator.set_latency(0.0)
        later, later_trailers = await call_trailers(
            Stub(two), keyed_request, metadata=keyed("order-1"), timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await Stub(one).CreateGeneration(
                request(num_outputs=1), metadata=keyed("order-1"), timeout=30
            )
        assert upstream_calls(emulator) == 1

        # A keyed upscale (of an image URL: never cached, only the key saves the repeat).
        output = (await Stub(one).CreateGeneration(request(num_outputs=1, seed=3))).outputs[0]
        by_url = generation_pb2.CreateUpscaleRequest(input=output.url)
        upscaled = await Stub(one).CreateUpscale(by_url, metadata=keyed("u-1"), timeout=30)
        again = await Stub(two).CreateUpscale(by_url, metadata=keyed("u-1"), timeout=30)
    assert "x-idempotent-replay" not in made_trailers
    assert waited_trailers["x-idempotent-replay"] == later_trailers["x-idempotent-replay"] == "true"
    assert list(waited.outputs) == list(made.outputs) == list(later.outputs)
    error = rich_error(reused.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert again.cache_result == CacheResult.CACHE_RESULT_REPLAYED
    assert again.outputs == upscaled.outputs
    assert upstream_calls(emulator) == 2  # the keyed generation, and the upscaled one
    assert sum(1 for r in emulator.requests if r.path == UPSCALE) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2 - 1 - 1
