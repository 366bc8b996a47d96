"""Gateways sharing Redis when Redis misbehaves: never pay twice for one seeded
generation while another gateway may still be paying for it, and never fail a call
because of Redis. Each test has two gateways on one real Redis and the emulator counting
upstream generations."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_scope
from gateway.app import GatewayApp
from gateway.cache_key import cache_key
from tests.cache.test_cache_service import request
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, GatewayFactory
from tests.fixtures import CREATE, call, eventually, upstream_calls
from tests.services import RedisServer
from tests.status import rich_error


async def two(make_gateway: GatewayFactory, server: RedisServer, **kw: Any) -> list[GatewayApp]:
    kw.setdefault("redis_timeout", 0.2)
    return [await make_gateway(cache="redis", redis_url=server.url, **kw) for _ in range(2)]


async def leader_then_waiter(
    apps: list[GatewayApp], emulator: Emulator, req: generation_pb2.GenerationRequest
) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
    """The first gateway's call has reached the upstream; the second's waits for it."""
    leader = asyncio.ensure_future(call(apps[0], req))
    await emulator.wait_for_requests(CREATE, 1)
    waiter = asyncio.ensure_future(call(apps[1], req))
    cache = apps[1].cache
    assert cache is not None
    await eventually(lambda: cache.waiting_on_other_gateways == 1)
    return leader, waiter


async def admin(server: RedisServer, *command: Any) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.execute_command(*command)
    finally:
        await client.aclose()


def key_for(emulator: Emulator, req: generation_pb2.GenerationRequest) -> str:
    return cache_key(req, account_scope(ACCOUNT_KEY, emulator.base_url))


async def test_redis_restarted_empty_while_the_leader_generates(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(4.0)
    apps = await two(make_gateway, redis_server)
    leader, waiter = await leader_then_waiter(apps, emulator, request(seed=2))
    redis_server.stop()
    redis_server.start()  # the lock is gone; the leader's next refresh puts it back
    (a, ra), (b, rb) = await asyncio.gather(leader, waiter)
    assert (ra, rb) == ("miss", "coalesced")
    assert list(a.outputs) == list(b.outputs)
    assert upstream_calls(emulator) == 1


async def test_a_write_pause_while_the_leader_publishes(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(1.5)
    apps = await two(make_gateway, redis_server)
    leader, waiter = await leader_then_waiter(apps, emulator, request(seed=3))
    # Writes pause from now until after the leader's answer (about 1.5 s from its start),
    # and end within the 2 s the leader keeps retrying what the waiter needs.
    await admin(redis_server, "CLIENT", "PAUSE", 2500, "WRITE")
    (_, ra), (_, rb) = await asyncio.gather(leader, waiter)
    assert (ra, rb) == ("miss", "coalesced")
    assert upstream_calls(emulator) == 1


async def test_a_corrupt_balance_value_does_not_disable_the_cache(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    apps = await two(make_gateway, redis_server)
    scope = account_scope(ACCOUNT_KEY, emulator.base_url)
    await admin(redis_server, "SET", f"scgw:v1:balance:{scope}", b"garbage")
    results = [(await call(apps[0], request(seed=4)))[1] for _ in range(3)]
    assert results == ["miss", "hit", "hit"]
    assert upstream_calls(emulator) == 1


async def test_a_leader_stopped_past_its_grace_is_not_paid_for_again(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(3.0)
    apps = await two(make_gateway, redis_server)
    leader, waiter = await leader_then_waiter(apps, emulator, request(seed=5))
    await apps[0].stop(grace=0.3)  # cancels the generation; the upstream still charges
    with pytest.raises(grpc.aio.AioRpcError):
        await leader
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await waiter
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.info is not None and error.info.reason == "GENERATION_ABANDONED"
    # The abandoned generation completes upstream, and nothing else was sent.
    await eventually(lambda: emulator.in_flight(ACCOUNT_KEY) == 0)
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_an_answer_with_every_output_filtered_is_shared_not_repaid(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(0.8)
    emulator.faults.inject("filter_outputs", count=1, drop=2)
    apps = await two(make_gateway, redis_server)
    leader, waiter = await leader_then_waiter(apps, emulator, request(seed=6))
    (a, ra), (b, rb) = await asyncio.gather(leader, waiter)
    assert (ra, rb) == ("miss", "coalesced")
    assert len(a.outputs) == len(b.outputs) == 0
    assert upstream_calls(emulator) == 1
    # Not stored: the next call is a new generation.
    again, result = await call(apps[1], request(seed=6))
    assert result == "miss" and len(again.outputs) == 2


async def test_unreadable_redis_content_is_ignored(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    empty = request(seed=8)
    await admin(redis_server, "SET", key_for(emulator, empty), b"")
    response, result = await call(app, empty)
    assert result == "miss" and len(response.outputs) == 2

    marked = request(seed=7)
    key = key_for(emulator, marked)
    await admin(redis_server, "SET", f"{key}:lock", b"someone", "PX", 300)
    await admin(redis_server, "SET", f"{key}:outcome", b"{not json")
    response, result = await call(app, marked)
    assert result == "miss" and len(response.outputs) == 2


async def test_a_long_redis_outage_does_not_fail_a_waiting_call(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(1.0)
    apps = await two(make_gateway, redis_server)
    leader, waiter = await leader_then_waiter(apps, emulator, request(seed=1))
    redis_server.stop()  # and it stays down
    (_, ra), (b, rb) = await asyncio.gather(leader, waiter)
    # After a whole lease without Redis the waiter serves itself: paying again is the
    # price of availability once nobody can tell whether the leader is alive.
    assert ra == "miss" and rb in ("miss", "coalesced")
    assert len(b.outputs) == 2
