"""Idempotency keys on gateways sharing Redis when Redis misbehaves: a repeat is never
paid for while the first call with its key may still be paying. Two gateways on one real
Redis, the emulator counting generations and keeping the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from emulator.server import Emulator
from gateway.account import account_scope
from gateway.app import GatewayApp
from gateway.idempotency import record_id
from gateway.idempotency_redis import _keys as redis_keys
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, GatewayFactory
from tests.fixtures import CREATE, call_trailers, eventually, request_with, upstream_calls
from tests.services import RedisServer
from tests.status import rich_error

request = request_with(num_outputs=2)


def keyed(key: str) -> list[tuple[str, str]]:
    return [("idempotency-key", key)]


async def two(make_gateway: GatewayFactory, server: RedisServer, **kw: Any) -> list[GatewayApp]:
    kw.setdefault("redis_timeout", 0.2)
    return [await make_gateway(cache="redis", redis_url=server.url, **kw) for _ in range(2)]


async def admin(server: RedisServer, *command: Any) -> Any:
    client = aioredis.Redis.from_url(server.url)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


def record_key(emulator: Emulator, key: str) -> str:
    return redis_keys(record_id(account_scope(ACCOUNT_KEY, emulator.base_url), key))[0]


async def test_redis_flushed_while_a_repeat_on_another_gateway_waits(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(3.0)
    first, second = await two(make_gateway, redis_server)
    made = asyncio.ensure_future(call_trailers(first, request(), metadata=keyed("flushed")))
    await emulator.wait_for_requests(CREATE, 1)
    repeat = asyncio.ensure_future(call_trailers(second, request(), metadata=keyed("flushed")))
    await eventually(lambda: second.idempotency.waiting == 1)  # polling the first's record
    await admin(redis_server, "FLUSHALL")  # Redis lost the record: not a release
    (a, a_trailers), (b, b_trailers) = await asyncio.gather(made, repeat)
    assert "x-idempotent-replay" not in a_trailers
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    assert b_trailers["x-idempotent-replay"] == "true"
    assert list(a.outputs) == list(b.outputs)


async def test_a_released_record_lets_a_waiting_repeat_run_at_once(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(1.0)
    emulator.faults.inject("worker_failure", count=1)  # refunded: the record is released
    first, second = await two(make_gateway, redis_server)
    made = asyncio.ensure_future(call_trailers(first, request(), metadata=keyed("released")))
    await emulator.wait_for_requests(CREATE, 1)
    repeat = asyncio.ensure_future(
        call_trailers(second, request(), metadata=keyed("released"), timeout=5)
    )
    await eventually(lambda: second.idempotency.waiting == 1)
    with pytest.raises(grpc.aio.AioRpcError) as refunded:
        await made
    assert refunded.value.code() == grpc.StatusCode.UNAVAILABLE
    answer, trailers = await repeat  # ran itself, well within its 5 s deadline
    assert "x-idempotent-replay" not in trailers and len(answer.outputs) == 2
    assert upstream_calls(emulator) == 2
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2


async def test_a_window_shorter_than_the_call_does_not_free_the_key_mid_call(
    make_gateway: GatewayFactory, emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(4.0)
    first, second = await two(make_gateway, redis_server, idempotency_window=1.0)
    made = asyncio.ensure_future(call_trailers(first, request(), metadata=keyed("short")))
    await emulator.wait_for_requests(CREATE, 1)
    name = record_key(emulator, "short")
    claimed_ttl = await admin(redis_server, "PTTL", name)
    assert claimed_ttl > 0

    async def window_over() -> bool:
        ttl = await admin(redis_server, "PTTL", name)
        return bool(ttl < 0 or ttl <= claimed_ttl - 1500)

    async with asyncio.timeout(10):  # observed on Redis's own clock: a window has passed
        while not await window_over():
            await asyncio.sleep(0.05)
    _, repeat_trailers = await call_trailers(second, request(), metadata=keyed("short"))
    await made
    assert upstream_calls(emulator) == 1
    assert repeat_trailers["x-idempotent-replay"] == "true"


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[Callable[[], None]]:
    """Stop the redis-server process (SIGSTOP): what was sent to it waits in its socket
    and runs when it is thawed (the returned function; also on exit)."""
    assert server.process is not None
    pid = server.process.pid
    thawed = False

    def thaw() -> None:
        nonlocal thawed
        if not thawed:
            os.kill(pid, signal.SIGCONT)
            thawed = True

    os.kill(pid, signal.SIGSTOP)
    try:
        yield thaw
    finally:
        thaw()


async def test_a_claim_that_timed_out_but_landed_does_not_poison_the_key(
    make_gateway: GatewayFactory,
    emulator: Emulator,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    app = await make_gateway(cache="redis", redis_url=redis_server.url, redis_timeout=0.2)
    with frozen(redis_server) as thaw:
        first = asyncio.ensure_future(
            call_trailers(app, request(), metadata=keyed("late"), timeout=10)
        )
        # The claim was sent and timed out; Redis runs it once thawed.
        await eventually(
            lambda: any("cache backend unavailable" in r.getMessage() for r in caplog.records)
        )
        thaw()
        outcome = await asyncio.gather(first, return_exceptions=True)
    async with asyncio.timeout(10):
        while isinstance(outcome[0], grpc.aio.AioRpcError):
            # Told nothing was sent and to retry shortly: a retry must be able to run.
            error = rich_error(outcome[0])
            assert error.info is not None, (error.code, error.message)
            assert error.info.reason == "IDEMPOTENCY_STORE_UNAVAILABLE", error.message
            await asyncio.sleep(0.1)
            outcome = await asyncio.gather(
                call_trailers(app, request(), metadata=keyed("late"), timeout=3),
                return_exceptions=True,
            )
    assert not isinstance(outcome[0], BaseException), outcome[0]
    answer, trailers = outcome[0]
    assert "x-idempotent-replay" not in trailers and len(answer.outputs) == 2
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
