"""The first cache tier during a real Redis outage: a real gateway, the emulator counting
generations, and a real Redis that is killed (connections refused) or paused (SIGSTOP:
connections hang until the timeout). Each seed is paid once by the gateway, repeats are
hits, and the response, the `x-cache` trailer, the access log and the metric agree."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis.asyncio as aioredis

from emulator.server import Emulator
from gateway.account import account_scope
from gateway.app import GatewayApp, Seams
from gateway.cache_key import cache_key
from gateway.call import cache_result_name
from tests.cache.test_cache_service import JumpingClock, request
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import call, eventually, upstream_calls
from tests.services import RedisServer

SEEDS = range(30)


@contextmanager
def outage(server: RedisServer, how: str) -> Iterator[None]:
    """Redis is away inside the block: killed (back empty after it) or paused."""
    process = server.process
    assert process is not None
    if how == "killed":
        server.stop()
    else:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if how == "killed":
            server.start()
        else:
            os.kill(process.pid, signal.SIGCONT)


async def a_round(app: GatewayApp, label: str) -> dict[str, tuple[str, str]]:
    """Every seed once, concurrently: request id -> (response's cache_result, x-cache)."""

    async def one(seed: int) -> tuple[str, tuple[str, str]]:
        request_id = f"{label}-{seed}"
        response, trailer = await call(
            app, request(seed=seed), metadata=(("x-request-id", request_id),)
        )
        return request_id, (cache_result_name(response.cache_result), trailer)

    return dict(await asyncio.gather(*(one(seed) for seed in SEEDS)))


def metric(app: GatewayApp, name: str, **labels: str) -> float:
    return app.registry.get_sample_value(name, labels) or 0.0


async def stored_in_redis(server: RedisServer, emulator: Emulator, app: GatewayApp) -> int:
    scope = account_scope(ACCOUNT_KEY, emulator.base_url)
    defaults = app.catalog_defaults()  # the key fills in the catalog's defaults
    keys = [cache_key(request(seed=s), scope, defaults) for s in SEEDS]
    client = aioredis.Redis.from_url(server.url)
    try:
        return int(await client.exists(*keys))
    finally:
        await client.aclose()


@pytest.mark.parametrize("how", ["killed", "paused"])
async def test_an_outage_pays_each_seed_once_and_the_answers_reach_redis_after(
    how: str,
    make_gateway: GatewayFactory,
    emulator: Emulator,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    clock = JumpingClock()  # the outage circuit's retry timer runs on it
    app = await make_gateway(
        Seams(clock=clock), cache="redis", redis_url=redis_server.url, redis_timeout=0.2
    )
    with outage(redis_server, how):
        rounds = [await a_round(app, f"round{n}") for n in range(3)]
    served = {rid: result for one in rounds for rid, result in one.items()}
    # The response and its trailer agree on every call ...
    assert all(response == trailer for response, trailer in served.values())
    # ... each seed was paid for once, by its first call; the repeats were tier hits.
    assert [{r for r, _ in one.values()} for one in rounds] == [{"miss"}, {"hit"}, {"hit"}]
    assert upstream_calls(emulator) == len(SEEDS)
    # ... the access log says the same for each call ...
    await eventually(lambda: len(access_lines(caplog)) == len(served))
    assert {r["request_id"]: r["cache_result"] for r in access_lines(caplog)} == {
        rid: response for rid, (response, _) in served.items()
    }
    # ... and so does the metric; Redis's failures are counted apart: one failed lookup
    # and one failed store per generation (a tier hit asks Redis for no entry).
    assert metric(app, "stablecog_cache_requests_total", result="miss") == len(SEEDS)
    assert metric(app, "stablecog_cache_requests_total", result="hit") == 2 * len(SEEDS)
    errors = "stablecog_cache_backend_errors_total"
    assert metric(app, errors, operation="lookup") == len(SEEDS)
    assert metric(app, errors, operation="store") == len(SEEDS)

    # Redis is back (empty, when it was killed): what the gateway generated meanwhile is
    # written back, so a gateway sharing the Redis pays for none of it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while await stored_in_redis(redis_server, emulator, app) < len(SEEDS):
        assert loop.time() < deadline, "the write-back never completed"
        clock.jump(1.0)  # the circuit and the write-back retry, a second apart
        await call(app, request(seed=0))  # a tier hit starts a due write-back
        await asyncio.sleep(0.05)
    other = await make_gateway(cache="redis", redis_url=redis_server.url, cache_local_entries=0)
    after = await a_round(other, "other")
    assert {response for response, _ in after.values()} == {"hit"}
    assert upstream_calls(emulator) == len(SEEDS)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [vars(r) for r in caplog.records if r.name == "gateway.access"]
