"""The seeded-request cache end to end: real gateways, the emulator counting generations,
and a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import GatewayApp, Seams
from gateway.clock import SystemClock
from tests.conftest import (
    ACCOUNT_KEY,
    INITIAL_CREDITS,
    OTHER_KEY,
    FakeClock,
    GatewayFactory,
)
from tests.fixtures import CREATE, Stub, call, eventually, request_with, upstream_calls
from tests.services import RedisServer

request = request_with(num_outputs=2)


class JumpingClock(SystemClock):
    """The real clock, except that monotonic time can be moved on by hand: timers can be
    skipped while every wait still ends (nothing sleeps on a clock nobody advances)."""

    def __init__(self) -> None:
        self._offset = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self._offset

    def jump(self, seconds: float) -> None:
        self._offset += seconds


def coalesced(app: GatewayApp) -> float:
    """How many calls of this gateway joined a flight already in progress."""
    found = app.registry.get_sample_value("stablecog_cache_requests_total", {"result": "coalesced"})
    return found or 0.0


@pytest.fixture(params=["memory", "redis"])
async def cached_gateway(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory
) -> GatewayApp:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return await make_gateway(cache="redis", redis_url=server.url)
    return await make_gateway(cache="memory")


async def test_seeded_call_twice_is_generated_once(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    first, first_cache = await call(cached_gateway, request(seed=42))
    second, second_cache = await call(cached_gateway, request(seed=42))
    assert (first_cache, second_cache) == ("miss", "hit")
    assert second.cache_result == generation_pb2.CACHE_RESULT_HIT
    assert first.cache_result == generation_pb2.CACHE_RESULT_MISS
    assert list(second.outputs) == list(first.outputs)
    assert second.settings == first.settings
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_unseeded_and_negative_seeds_always_go_upstream(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    results = [
        (await call(cached_gateway, request()))[1],
        (await call(cached_gateway, request()))[1],
        (await call(cached_gateway, request(seed=-1)))[1],
        (await call(cached_gateway, request(seed=-1)))[1],
    ]
    assert results == ["uncacheable"] * 4
    assert upstream_calls(emulator) == 4


async def test_omitted_default_and_explicit_default_share_an_entry(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    bare = generation_pb2.GenerationRequest(prompt="a  lighthouse\nat dawn", seed=9)
    explicit = generation_pb2.GenerationRequest(
        prompt="a lighthouse at dawn", seed=9, num_outputs=2, guidance_scale=7, inference_steps=30
    )
    _, first = await call(cached_gateway, bare)
    _, second = await call(cached_gateway, explicit)
    assert (first, second) == ("miss", "hit")
    assert upstream_calls(emulator) == 1


async def test_accounts_never_share_entries(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(api_key=None)
    mine = [("authorization", f"Bearer {ACCOUNT_KEY}")]
    theirs = [("authorization", f"Bearer {OTHER_KEY}")]
    _, a = await call(app, request(seed=5), metadata=mine)
    _, b = await call(app, request(seed=5), metadata=theirs)
    _, c = await call(app, request(seed=5), metadata=theirs)
    assert (a, b, c) == ("miss", "miss", "hit")
    assert upstream_calls(emulator) == 2
    assert emulator.balance(OTHER_KEY) == INITIAL_CREDITS - 2


async def test_hit_reports_the_newest_balance(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    first, _ = await call(cached_gateway, request(seed=1, num_outputs=1))
    spent, _ = await call(cached_gateway, request(num_outputs=3))  # unseeded: paid
    hit, result = await call(cached_gateway, request(seed=1, num_outputs=1))
    assert result == "hit"
    assert first.remaining_credits == INITIAL_CREDITS - 1
    assert hit.remaining_credits == spent.remaining_credits == INITIAL_CREDITS - 4


async def test_concurrent_identical_calls_share_one_generation(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cached_gateway.grpc_port}") as channel:
        stub = Stub(channel)
        calls = [stub.CreateGeneration(request(seed=77)) for _ in range(200)]
        responses = await asyncio.gather(*calls)
        results = [dict(await c.trailing_metadata())["x-cache"] for c in calls]
    assert len(responses) == 200
    assert upstream_calls(emulator) == 1
    assert results.count("miss") == 1
    assert set(results) <= {"miss", "coalesced", "hit"}
    assert all(list(r.outputs) == list(responses[0].outputs) for r in responses)
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_cancelled_first_caller_does_not_waste_the_generation(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(1.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cached_gateway.grpc_port}") as channel:
        stub = Stub(channel)
        first = stub.CreateGeneration(request(seed=123), timeout=0.3)
        await emulator.wait_for_requests(CREATE, 1)
        others = [stub.CreateGeneration(request(seed=123), timeout=10) for _ in range(5)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await first
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        answered = await asyncio.gather(*others)
    assert all(len(r.outputs) == 2 for r in answered)
    # The cache was filled by the generation the first caller started.
    _, result = await call(cached_gateway, request(seed=123))
    assert result == "hit"
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_abandoned_generation_still_fills_the_cache(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(0.6)
    with pytest.raises(grpc.aio.AioRpcError):
        await call(cached_gateway, request(seed=321), timeout=0.2)
    assert cached_gateway.cache is not None
    await cached_gateway.cache.wait_idle()  # the generation finishes after its caller left
    _, result = await call(cached_gateway, request(seed=321))
    assert result == "hit"
    assert upstream_calls(emulator) == 1


async def test_errors_are_not_cached(cached_gateway: GatewayApp, emulator: Emulator) -> None:
    emulator.faults.inject("worker_failure", count=1, error="runpod_failed")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(cached_gateway, request(seed=8))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    _, second = await call(cached_gateway, request(seed=8))
    _, third = await call(cached_gateway, request(seed=8))
    assert (second, third) == ("miss", "hit")
    assert upstream_calls(emulator) == 2


async def test_responses_without_outputs_are_not_cached(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.faults.inject("filter_outputs", count=1, drop=2)
    empty, _ = await call(cached_gateway, request(seed=6))
    assert len(empty.outputs) == 0
    full, result = await call(cached_gateway, request(seed=6))
    assert result == "miss" and len(full.outputs) == 2


async def test_cache_control_metadata(cached_gateway: GatewayApp, emulator: Emulator) -> None:
    _, stored = await call(
        cached_gateway, request(seed=3), metadata=[("cache-control", "no-store")]
    )
    _, after_no_store = await call(cached_gateway, request(seed=3))
    _, no_cache = await call(
        cached_gateway, request(seed=3), metadata=[("cache-control", "no-cache")]
    )
    _, hit = await call(cached_gateway, request(seed=3))
    assert (stored, after_no_store, no_cache, hit) == ("bypass", "miss", "bypass", "hit")
    assert upstream_calls(emulator) == 3


async def test_cache_off_goes_upstream_every_time(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(cache="off")
    results = [(await call(app, request(seed=1)))[1] for _ in range(2)]
    assert results == ["bypass", "bypass"]
    assert upstream_calls(emulator) == 2


async def test_ttl_expiry_with_an_injected_clock(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    clock = FakeClock()
    app = await make_gateway(Seams(clock=clock), cache="memory", cache_ttl=60)
    _, a = await call(app, request(seed=11))
    clock.advance(59)
    _, b = await call(app, request(seed=11))
    clock.advance(2)
    _, c = await call(app, request(seed=11))
    assert (a, b, c) == ("miss", "hit", "miss")
    assert upstream_calls(emulator) == 2


# --- Redis specifics ---


async def test_redis_down_fails_open_and_comes_back(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    clock = JumpingClock()  # the backend's retry timer runs on it
    app = await make_gateway(
        Seams(clock=clock),
        cache="redis",
        redis_url=redis_server.url,
        redis_timeout=0.2,
        # Redis alone; with the first tier: tests/cache/test_cache_tier_redis.py.
        cache_local_entries=0,
    )
    _, a = await call(app, request(seed=21))
    _, b = await call(app, request(seed=21))
    assert (a, b) == ("miss", "hit")

    redis_server.stop()
    outage = [(await call(app, request(seed=21)))[1] for _ in range(3)]
    assert outage == ["miss"] * 3  # served from the upstream, no error
    assert upstream_calls(emulator) == 4

    redis_server.start()  # empty again: same address, no persistence
    _, still_down = await call(app, request(seed=21))  # the circuit is still open
    clock.jump(1.0)  # the backend is retried after a second
    _, refill = await call(app, request(seed=21))
    _, hit = await call(app, request(seed=21))
    assert (still_down, refill, hit) == ("miss", "miss", "hit")
    assert upstream_calls(emulator) == 6


async def test_redis_never_stores_the_key(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    import hashlib

    import redis

    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    await call(app, request(seed=31, prompt="a secret garden"))
    await call(app, request(seed=31, prompt="a secret garden"))
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = client.keys("*")
        assert keys, "the cache wrote nothing to Redis"
        blobs = b"".join(keys) + b"".join(client.get(k) or b"" for k in keys)
    finally:
        client.close()
    for secret in (ACCOUNT_KEY, ACCOUNT_KEY[3:], hashlib.sha256(ACCOUNT_KEY.encode()).hexdigest()):
        assert secret.encode() not in blobs
    assert all(k.startswith(b"scgw:v1:") for k in keys)


async def test_explicitly_cancelled_first_caller_still_fills_the_cache(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(0.8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cached_gateway.grpc_port}") as channel:
        stub = Stub(channel)
        first = stub.CreateGeneration(request(seed=404))
        await emulator.wait_for_requests(CREATE, 1)
        second = stub.CreateGeneration(request(seed=404), timeout=10)
        await eventually(lambda: coalesced(cached_gateway) == 1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        response = await second
    assert len(response.outputs) == 2
    _, result = await call(cached_gateway, request(seed=404))
    assert result == "hit"
    assert upstream_calls(emulator) == 1


async def test_a_hit_reports_the_balance_of_the_latest_started_call(
    cached_gateway: GatewayApp, emulator: Emulator
) -> None:
    await call(cached_gateway, request(seed=55, num_outputs=1))  # 999 left
    emulator.faults.inject("delay", count=1, seconds=1.0)
    # The slow call starts first (998 left) and answers last; the quick one starts
    # second (997 left) and answers first. The newer balance is 997.
    slow = asyncio.ensure_future(call(cached_gateway, request(num_outputs=1)))
    await emulator.wait_for_requests(CREATE, 2)
    quick, _ = await call(cached_gateway, request(num_outputs=1))
    late, _ = await slow
    assert (late.remaining_credits, quick.remaining_credits) == (998, 997)
    hit, result = await call(cached_gateway, request(seed=55, num_outputs=1))
    assert result == "hit"
    assert hit.remaining_credits == 997


async def test_gateways_sharing_redis_wait_through_a_redis_pause(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    import redis.asyncio as aioredis

    emulator.set_latency(1.5)
    first = await make_gateway(cache="redis", redis_url=redis_server.url, redis_timeout=0.2)
    second = await make_gateway(cache="redis", redis_url=redis_server.url, redis_timeout=0.2)
    leader = asyncio.ensure_future(call(first, request(seed=606)))
    await emulator.wait_for_requests(CREATE, 1)
    waiter = asyncio.ensure_future(call(second, request(seed=606)))
    assert second.cache is not None
    await eventually(lambda: second.cache is not None and second.cache.waiting_on_other_gateways)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 600, "ALL")
    finally:
        await admin.aclose()
    (a, a_result), (b, b_result) = await asyncio.gather(leader, waiter)
    assert (a_result, b_result) == ("miss", "coalesced")
    assert list(a.outputs) == list(b.outputs)
    assert upstream_calls(emulator) == 1


async def test_a_failed_leader_fails_the_other_gateways_waiters_without_a_resend(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    from tests.status import rich_error

    emulator.set_latency(0.8)
    emulator.faults.inject("drop_connection", count=1, charge=True)
    first = await make_gateway(cache="redis", redis_url=redis_server.url)
    second = await make_gateway(cache="redis", redis_url=redis_server.url)
    leader = asyncio.ensure_future(call(first, request(seed=707)))
    await emulator.wait_for_requests(CREATE, 1)
    waiter = asyncio.ensure_future(call(second, request(seed=707)))
    await eventually(lambda: second.cache is not None and second.cache.waiting_on_other_gateways)
    errors = []
    for future in (leader, waiter):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await future
        errors.append(rich_error(caught.value))
    # The connection was lost after the upstream charged: nobody may send it again.
    assert [e.code for e in errors] == [grpc.StatusCode.INTERNAL] * 2
    assert all(e.info is not None and e.info.reason == "UPSTREAM_CONNECTION_LOST" for e in errors)
    assert upstream_calls(emulator) == 1
    # A later call is a new flight, not a replay of the old failure.
    _, result = await call(second, request(seed=707))
    assert result == "miss"


async def test_stopping_lets_an_abandoned_generation_fill_the_cache(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    import redis

    emulator.set_latency(0.8)
    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    with pytest.raises(grpc.aio.AioRpcError):
        await call(app, request(seed=808), timeout=0.2)
    assert app.cache is not None and app.cache.flights == 1
    await app.stop(grace=5)
    client = redis.Redis.from_url(redis_server.url)
    try:
        entries = [
            k for k in client.keys("scgw:v1:gen:*") if not k.endswith((b":lock", b":outcome"))
        ]
    finally:
        client.close()
    assert len(entries) == 1
    assert upstream_calls(emulator) == 1
