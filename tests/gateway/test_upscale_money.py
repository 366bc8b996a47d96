"""CreateUpscale is as money-safe as CreateGeneration, judged by the emulator's ledger:
identical upscales in flight together are paid once, a caller's budget covers upscales,
and an idempotency key makes a repeat free. Real gateways over gRPC, the real emulator;
the only seam is a network that can hold upscale requests until the test lets them go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.app import GatewayApp, Seams
from gateway.transport import AiohttpTransport
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, OTHER_KEY, GatewayFactory
from tests.fixtures import eventually, request
from tests.services import RedisServer
from tests.status import rich_error

Stub = generation_pb2_grpc.GenerationServiceStub
UpscaleRequest = generation_pb2.CreateUpscaleRequest
UPSCALE = "/v1/image/upscale/create"
CREATE = "/v1/image/generation/create"
CacheResult = generation_pb2.CacheResult
BUDGET = 6
POLICY = f"callers:\n  search:\n    credits: {{day: {BUDGET}}}\n"


class HeldUpscales(httpx.AsyncBaseTransport):
    """The network to the emulator, where upscale requests wait for `release` (counted in
    `held` while they wait); everything else goes through."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport(max_connections=50)
        self.release = asyncio.Event()
        self.release.set()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == UPSCALE and not self.release.is_set():
            self.held += 1
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def sent(emulator: Emulator, path: str = UPSCALE) -> int:
    return sum(1 for r in emulator.requests if r.path == path)


def cache_count(gateway: GatewayApp, result: str) -> float:
    found = gateway.registry.get_sample_value("stablecog_cache_requests_total", {"result": result})
    return found or 0.0


async def an_output(stub: Stub, seed: int = 7) -> generation_pb2.GenerationOutput:
    generated = await stub.CreateGeneration(
        request(num_outputs=1, width=256, height=256, seed=seed)
    )
    return generated.outputs[0]


async def outcome(
    stub: Stub, upscale: UpscaleRequest, metadata: tuple[tuple[str, str], ...] = ()
) -> str:
    """ "OK <x-cache>" or "<code> <ErrorInfo reason>"."""
    call = stub.CreateUpscale(upscale, timeout=20, metadata=metadata)
    try:
        await call
    except grpc.aio.AioRpcError as error:
        found = rich_error(error)
        return f"{error.code().name} {found.info.reason if found.info else ''}"
    return f"OK {dict(await call.trailing_metadata())['x-cache']}"


@pytest.fixture
def network() -> HeldUpscales:
    return HeldUpscales()


@pytest.fixture
async def held(make_gateway: GatewayFactory, network: HeldUpscales) -> GatewayApp:
    return await make_gateway(Seams(upstream_transport=network))


@pytest.fixture
async def held_stub(held: GatewayApp) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{held.grpc_port}") as channel:
        yield Stub(channel)


# --- coalescing ---


async def test_concurrent_identical_upscales_cost_one_credit(
    held: GatewayApp, held_stub: Stub, network: HeldUpscales, emulator: Emulator
) -> None:
    output = await an_output(held_stub)
    before = emulator.balance(ACCOUNT_KEY)
    network.release.clear()
    first = asyncio.ensure_future(outcome(held_stub, UpscaleRequest(input=output.id)))
    await eventually(lambda: network.held == 1)
    others = [
        asyncio.ensure_future(outcome(held_stub, UpscaleRequest(input=output.id.upper())))
        for _ in range(19)
    ]
    await eventually(lambda: cache_count(held, "coalesced") == 19)
    assert network.held == 1
    network.release.set()
    results = [await first, *[await o for o in others]]
    assert results == ["OK miss"] + ["OK coalesced"] * 19
    assert sent(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == before - 1
    saved = held.registry.get_sample_value("stablecog_credits_saved_total", {"caller": "unknown"})
    assert saved == 19


async def test_a_coalesced_flight_outlives_its_cancelled_first_caller(
    held: GatewayApp, held_stub: Stub, network: HeldUpscales, emulator: Emulator
) -> None:
    output = await an_output(held_stub)
    before = emulator.balance(ACCOUNT_KEY)
    network.release.clear()
    first = held_stub.CreateUpscale(UpscaleRequest(input=output.id), timeout=20)
    await eventually(lambda: network.held == 1)
    waiter = asyncio.ensure_future(outcome(held_stub, UpscaleRequest(input=output.id)))
    await eventually(lambda: cache_count(held, "coalesced") == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    network.release.set()
    assert await waiter == "OK coalesced"
    assert await outcome(held_stub, UpscaleRequest(input=output.id)) == "OK hit"
    assert sent(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == before - 1


async def test_waiters_share_the_flights_error(
    held: GatewayApp, held_stub: Stub, network: HeldUpscales, emulator: Emulator
) -> None:
    output = await an_output(held_stub)
    before = emulator.balance(ACCOUNT_KEY)
    emulator.faults.inject("drop_connection", charge=True)  # charged, answer lost
    network.release.clear()
    calls = [asyncio.ensure_future(outcome(held_stub, UpscaleRequest(input=output.id)))]
    await eventually(lambda: network.held == 1)
    calls += [
        asyncio.ensure_future(outcome(held_stub, UpscaleRequest(input=output.id))) for _ in range(4)
    ]
    await eventually(lambda: cache_count(held, "coalesced") == 4)
    network.release.set()
    results = [await c for c in calls]
    # Never sent again while the first may have been charged.
    assert results == ["INTERNAL UPSTREAM_CONNECTION_LOST"] * 5
    assert sent(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == before - 1


async def test_another_accounts_upscale_is_not_served_from_the_cache(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    gateway = await make_gateway(api_key=None)
    mine = (("authorization", f"Bearer {ACCOUNT_KEY}"),)
    theirs = (("authorization", f"Bearer {OTHER_KEY}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        generated = await stub.CreateGeneration(
            request(num_outputs=1, width=256, height=256, seed=3), metadata=mine
        )
        upscale = UpscaleRequest(input=generated.outputs[0].id)
        assert await outcome(stub, upscale, mine) == "OK miss"
        assert await outcome(stub, upscale, mine) == "OK hit"
        # The other account's call is its own (whatever the upstream answers it): never
        # the first account's cached picture.
        assert not (await outcome(stub, upscale, theirs)).endswith("hit")
    assert sent(emulator) == 2


# --- budgets ---


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(POLICY)
    return path


async def test_a_budget_covers_upscales_and_a_cache_hit_is_free(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    gateway = await make_gateway(budgets=policy_file, caller="search")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        output = await an_output(stub)  # 1 credit of the budget
        cached = UpscaleRequest(input=output.id)
        assert await outcome(stub, cached) == "OK miss"  # 1 more
        # URL upscales are never cached: each would cost a credit. 3x the budget at once.
        by_url = UpscaleRequest(input=output.url)
        results = await asyncio.gather(*(outcome(stub, by_url) for _ in range(3 * BUDGET)))
        assert results.count("OK uncacheable") == BUDGET - 2
        assert results.count("RESOURCE_EXHAUSTED BUDGET_EXHAUSTED") == 2 * BUDGET + 2
        assert await outcome(stub, cached) == "OK hit"  # free, though the budget is spent
    assert INITIAL_CREDITS - emulator.balance(ACCOUNT_KEY) == BUDGET
    assert sent(emulator) == BUDGET - 1
    spent = gateway.registry.get_sample_value(
        "stablecog_budget_rejections_total", {"caller": "search", "reason": "day"}
    )
    assert spent == 2 * BUDGET + 2


async def test_an_upscale_refunded_upstream_gives_its_credit_back_to_the_budget(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    gateway = await make_gateway(budgets=policy_file, caller="search", cache="off")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        output = await an_output(stub)
        emulator.faults.inject("worker_failure")  # refunded: the budget is not spent
        assert await outcome(stub, UpscaleRequest(input=output.id)) == "UNAVAILABLE RUNPOD_FAILED"
        emulator.faults.inject("drop_connection", charge=True)  # may have been charged: kept
        lost = await outcome(stub, UpscaleRequest(input=output.id))
        assert lost == "INTERNAL UPSTREAM_CONNECTION_LOST"
        results = [await outcome(stub, UpscaleRequest(input=output.id)) for _ in range(BUDGET)]
    assert results.count("OK uncacheable") == BUDGET - 2
    assert INITIAL_CREDITS - emulator.balance(ACCOUNT_KEY) == BUDGET


# --- idempotency keys ---


def keyed(key: str) -> tuple[tuple[str, str], ...]:
    return (("idempotency-key", key),)


async def test_a_keyed_upscale_repeated_is_paid_once(
    held: GatewayApp, held_stub: Stub, network: HeldUpscales, emulator: Emulator
) -> None:
    output = await an_output(held_stub)
    before = emulator.balance(ACCOUNT_KEY)
    by_url = UpscaleRequest(input=output.url)  # not cached: only the key saves the repeat
    call = held_stub.CreateUpscale(by_url, metadata=keyed("u-1"))
    first = await call
    assert first.cache_result == CacheResult.CACHE_RESULT_UNCACHEABLE
    again_call = held_stub.CreateUpscale(by_url, metadata=keyed("u-1"))
    again = await again_call
    assert again.cache_result == CacheResult.CACHE_RESULT_REPLAYED
    assert dict(await again_call.trailing_metadata())["x-idempotent-replay"] == "true"
    assert again.outputs[0].upscaled_image_url == first.outputs[0].upscaled_image_url
    # Concurrent repeats of a new key, the first held upstream: one upscale.
    network.release.clear()
    calls = [asyncio.ensure_future(outcome(held_stub, by_url, keyed("u-2"))) for _ in range(8)]
    await eventually(lambda: network.held == 1 and held.idempotent_upscales.flights == 1)
    network.release.set()
    results = [await c for c in calls]
    assert sorted(results) == ["OK replayed"] * 7 + ["OK uncacheable"]
    assert sent(emulator) == 2
    assert emulator.balance(ACCOUNT_KEY) == before - 2


async def test_a_key_reused_for_another_request_is_refused_unsent(
    stub: Stub, emulator: Emulator
) -> None:
    output = await an_output(stub)
    assert await outcome(stub, UpscaleRequest(input=output.url), keyed("k")) == "OK uncacheable"
    other = UpscaleRequest(input=output.id)
    reused = "FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED"
    assert await outcome(stub, other, keyed("k")) == reused
    # A generation's key is not an upscale's: the same key on the other method is refused.
    await stub.CreateGeneration(request(num_outputs=1), metadata=keyed("g"))
    assert await outcome(stub, other, keyed("g")) == reused
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(num_outputs=1), metadata=keyed("k"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sent(emulator) == 1
    assert sent(emulator, CREATE) == 2


async def test_a_keyed_upscale_record_in_redis_replays_as_an_upscale(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    gateway = await make_gateway(cache="redis", redis_url=redis_server.url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        output = await an_output(stub)
        by_url = UpscaleRequest(input=output.url)
        first = await stub.CreateUpscale(by_url, metadata=keyed("r-1"))
        again = await stub.CreateUpscale(by_url, metadata=keyed("r-1"))
        assert again.cache_result == CacheResult.CACHE_RESULT_REPLAYED
        assert again.outputs == first.outputs and again.settings == first.settings
        await stub.CreateGeneration(request(num_outputs=1), metadata=keyed("r-2"))
        reused = "FAILED_PRECONDITION IDEMPOTENCY_KEY_REUSED"
        assert await outcome(stub, by_url, keyed("r-2")) == reused
    assert sent(emulator) == 1
