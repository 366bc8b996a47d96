"""Idempotency keys end to end: a real gateway on loopback, the emulator counting
generations and keeping the ledger, and a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import GatewayApp, Seams
from tests.cache.test_cache_service import JumpingClock
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, OTHER_KEY, GatewayFactory
from tests.fixtures import CREATE, call_trailers, request_with, upstream_calls
from tests.services import RedisServer
from tests.status import rich_error

request = request_with(num_outputs=2)
REPLAYED = generation_pb2.CacheResult.CACHE_RESULT_REPLAYED


def keyed(key: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("idempotency-key", key), *extra]


def replays(app: GatewayApp, result: str) -> float:
    found = app.registry.get_sample_value(
        "stablecog_idempotent_replays_total", {"caller": "unknown", "result": result}
    )
    return found or 0.0


async def failed(
    app: GatewayApp, req: generation_pb2.GenerationRequest, **kw: object
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_trailers(app, req, **kw)
    return caught.value


@pytest.fixture(params=["memory", "redis", "off"])
async def keyed_gateway(request: pytest.FixtureRequest, make_gateway: GatewayFactory) -> GatewayApp:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return await make_gateway(cache="redis", redis_url=server.url)
    return await make_gateway(cache=request.param)


async def test_sequential_repeat_is_generated_once_and_marked_a_replay(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    key = str(uuid.uuid4())
    # Unseeded: the cache would generate it every time; the key makes it once.
    first, first_trailers = await call_trailers(keyed_gateway, request(), metadata=keyed(key))
    again, again_trailers = await call_trailers(keyed_gateway, request(), metadata=keyed(key))
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    assert list(again.outputs) == list(first.outputs) and len(first.outputs) == 2
    assert again.settings == first.settings
    assert again.remaining_credits == first.remaining_credits
    assert again.cache_result == REPLAYED
    assert first_trailers.get("x-idempotent-replay") is None
    assert again_trailers["x-idempotent-replay"] == "true"
    assert again_trailers["x-cache"] == "replayed"
    assert replays(keyed_gateway, "ok") == 1
    saved = keyed_gateway.registry.get_sample_value(
        "stablecog_credits_saved_total", {"caller": "unknown"}
    )
    assert saved == 2


async def test_a_seeded_keyed_call_is_replayed_not_served_from_the_cache(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(cache="memory")
    _, first = await call_trailers(app, request(seed=7), metadata=keyed("seeded-1"))
    _, again = await call_trailers(app, request(seed=7), metadata=keyed("seeded-1"))
    _, other = await call_trailers(app, request(seed=7), metadata=keyed("seeded-2"))
    assert (first["x-cache"], again["x-cache"], other["x-cache"]) == ("miss", "replayed", "hit")
    assert upstream_calls(emulator) == 1


async def test_concurrent_repeats_share_one_generation(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(0.3)
    key = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(call_trailers(keyed_gateway, request(), metadata=keyed(key)) for _ in range(8))
    )
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    outputs = {tuple(o.id for o in response.outputs) for response, _ in answers}
    assert len(outputs) == 1
    marks = sorted(trailers.get("x-idempotent-replay", "no") for _, trailers in answers)
    assert marks == ["no"] + ["true"] * 7


async def test_a_repeat_after_its_first_caller_gave_up_gets_the_result(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.set_latency(1.0)
    key = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await call_trailers(keyed_gateway, request(), metadata=keyed(key), timeout=0.3)
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    again, trailers = await call_trailers(keyed_gateway, request(), metadata=keyed(key))
    assert trailers["x-idempotent-replay"] == "true"
    assert len(again.outputs) == 2
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_the_same_key_with_another_request_is_refused_and_nothing_is_sent(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    key = str(uuid.uuid4())
    await call_trailers(keyed_gateway, request(), metadata=keyed(key))
    error = rich_error(await failed(keyed_gateway, request(num_outputs=1), metadata=keyed(key)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.info is not None and error.info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert key not in error.message
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_keys_are_scoped_to_the_account(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(api_key=None)
    mine = keyed("shared-key", ("authorization", f"Bearer {ACCOUNT_KEY}"))
    theirs = keyed("shared-key", ("authorization", f"Bearer {OTHER_KEY}"))
    a, a_trailers = await call_trailers(app, request(), metadata=mine)
    b, b_trailers = await call_trailers(app, request(), metadata=theirs)
    assert upstream_calls(emulator) == 2
    assert "x-idempotent-replay" not in a_trailers and "x-idempotent-replay" not in b_trailers
    assert {o.id for o in a.outputs}.isdisjoint(o.id for o in b.outputs)
    assert emulator.balance(ACCOUNT_KEY) == emulator.balance(OTHER_KEY) == INITIAL_CREDITS - 2


async def test_a_failure_that_may_have_been_charged_is_replayed_not_paid_again(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.faults.inject("drop_connection", count=1, charge=True)
    key = str(uuid.uuid4())
    first = rich_error(await failed(keyed_gateway, request(), metadata=keyed(key)))
    again = rich_error(await failed(keyed_gateway, request(), metadata=keyed(key)))
    assert first.code == again.code == grpc.StatusCode.INTERNAL
    assert first.info is not None and again.info is not None
    assert first.info.reason == again.info.reason == "UPSTREAM_CONNECTION_LOST"
    assert again.message == first.message
    assert "idempotent_replay" not in first.info.metadata
    assert again.info.metadata["idempotent_replay"] == "true"
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    assert replays(keyed_gateway, "error") == 1


async def test_a_refunded_failure_may_run_again(
    keyed_gateway: GatewayApp, emulator: Emulator
) -> None:
    emulator.faults.inject("worker_failure", count=1)
    key = str(uuid.uuid4())
    first = rich_error(await failed(keyed_gateway, request(), metadata=keyed(key)))
    assert first.code == grpc.StatusCode.UNAVAILABLE
    again, trailers = await call_trailers(keyed_gateway, request(), metadata=keyed(key))
    assert "x-idempotent-replay" not in trailers and len(again.outputs) == 2
    assert upstream_calls(emulator) == 2
    # The refund and one charge: the key's generation was paid for once.
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_a_key_is_forgotten_after_the_window(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    clock = JumpingClock()
    app = await make_gateway(seams=Seams(clock=clock), idempotency_window=60.0)
    await call_trailers(app, request(), metadata=keyed("windowed"))
    clock.jump(59.0)
    _, within = await call_trailers(app, request(), metadata=keyed("windowed"))
    clock.jump(2.0)
    _, after = await call_trailers(app, request(), metadata=keyed("windowed"))
    assert within["x-idempotent-replay"] == "true"
    assert "x-idempotent-replay" not in after
    assert upstream_calls(emulator) == 2


@pytest.mark.parametrize("value", ["", "has space", " padded", "x" * 256])
async def test_an_invalid_key_is_refused_before_anything_is_sent(
    gateway: GatewayApp, emulator: Emulator, value: str
) -> None:
    error = rich_error(await failed(gateway, request(), metadata=keyed(value)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "IDEMPOTENCY_KEY_INVALID"
    assert [field for field, _ in error.violations] == ["idempotency-key"]
    assert upstream_calls(emulator) == 0


async def test_keyed_calls_fail_closed_without_redis(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    redis_server.stop()
    error = rich_error(await failed(app, request(), metadata=keyed("needs-redis")))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert error.info is not None and error.info.reason == "IDEMPOTENCY_STORE_UNAVAILABLE"
    assert error.retry_delay is not None
    assert upstream_calls(emulator) == 0
    # A call without a key is served as before (the cache fails open).
    _, trailers = await call_trailers(app, request())
    assert trailers["x-cache"] == "uncacheable"
    await emulator.wait_for_requests(CREATE, 1)


async def test_the_longest_and_oddest_valid_keys_are_accepted(
    gateway: GatewayApp, emulator: Emulator
) -> None:
    for value in ("k" * 255, "!~{}\"'#:/"):
        await call_trailers(gateway, request(), metadata=keyed(value))
        _, trailers = await call_trailers(gateway, request(), metadata=keyed(value))
        assert trailers["x-idempotent-replay"] == "true"
    assert upstream_calls(emulator) == 2
