"""A gateway process whose Redis is found through a real Sentinel (`redis+sentinel://`),
or reached over TLS with a client certificate (`rediss://`), keeps everything there as on
one plain server: a cache entry (a hit), an idempotency record (a replay) and a budget
(reserved, settled, and refusing past its limit), all read back from the Redis itself.

The Sentinel, the master it watches and the TLS port are loopback TCP ports, which Redis
cannot bind as port 0 and report: each binds a random high port itself and is started
again on another if that one was taken (tests.services `_on_some_port`), a retry on
conflict, never a port probed and handed over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import Stub, call, call_trailers, request, upstream_calls
from tests.processes import GatewayProcess
from tests.services import RedisSentinelServers, RedisTlsServer
from tests.status import rich_error

BUDGET = 3
POLICY = f"callers:\n  search:\n    credits: {{day: {BUDGET}}}\n"


def redis_keys(client: redis.Redis) -> list[str]:
    try:
        return sorted(key.decode() for key in client.scan_iter(count=1000))
    finally:
        client.close()


@pytest.mark.parametrize("topology", ["sentinel", "tls"])
async def test_cache_idempotency_and_budgets_through_sentinel_or_tls(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, tmp_path: Path, topology: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    if topology == "sentinel":
        sentinel: RedisSentinelServers = request.getfixturevalue("redis_sentinel")
        url = sentinel.url  # names only the Sentinel: the master is what it says
        direct = redis.Redis.from_url(sentinel.master_url)
    else:
        tls: RedisTlsServer = request.getfixturevalue("redis_tls")
        url = tls.url("gateway")
        direct = redis.Redis.from_url(url)
    policy = tmp_path / "budgets.yaml"
    policy.write_text(POLICY)
    gateway = spawn(
        GATEWAY_CACHE="redis", GATEWAY_REDIS_URL=url, GATEWAY_REDIS_TIMEOUT="2",
        GATEWAY_BUDGETS=str(policy), GATEWAY_CALLER="search",
        GATEWAY_CACHE_LOCAL_ENTRIES="0",  # every hit read from that Redis
    )  # fmt: skip
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = Stub(channel)
        seeded = request_of(seed=21)
        results = [(await call(stub, seeded))[1] for _ in range(2)]
        keyed = (("idempotency-key", "order-9"),)
        made, made_trailers = await call_trailers(stub, request_of(), metadata=keyed)
        again, again_trailers = await call_trailers(stub, request_of(), metadata=keyed)
        budget = await stub.GetBudget(generation_pb2.GetBudgetRequest(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateGeneration(request_of(num_outputs=2), timeout=10)
    assert results == ["miss", "hit"]
    assert "x-idempotent-replay" not in made_trailers
    assert again_trailers["x-idempotent-replay"] == "true"
    assert list(again.outputs) == list(made.outputs)
    assert budget.shared  # from Redis, not this gateway's own figures
    assert [(w.window, w.limit, w.spent, w.reserved) for w in budget.windows] == [
        ("day", BUDGET, 2, 0)
    ]
    error = rich_error(refused.value)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.info is not None and error.info.reason == "BUDGET_EXHAUSTED"
    assert upstream_calls(emulator) == 2
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    # All of it is in that Redis (the master the Sentinel named; the TLS server).
    kinds = {key.split(":")[2] for key in redis_keys(direct)}
    assert {"gen", "balance", "idem", "budget"} <= kinds, kinds


def request_of(**fields: object) -> generation_pb2.GenerationRequest:
    return request(**{"num_outputs": 1, **fields})


async def test_a_tls_redis_whose_certificate_is_not_trusted_is_not_used(
    spawn: Callable[..., GatewayProcess], redis_tls: RedisTlsServer, pki: Path
) -> None:
    """The server's certificate is checked: without the CA that signed it, the gateway
    never talks to this Redis (it reports Redis unreachable and serves without it)."""
    url = redis_tls.url("gateway").replace(f"ssl_ca_certs={pki / 'ca.crt'}&", "")
    assert "ssl_ca_certs" not in url
    gateway = spawn(GATEWAY_CACHE="redis", GATEWAY_REDIS_URL=url, GATEWAY_REDIS_TIMEOUT="2")
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        _, cache = await call(Stub(channel), request_of(seed=22))
    assert cache == "miss"
    unreachable = 'stablecog_dependency_reachable{dependency="redis"} 0.0'
    async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(10):
        url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
        while unreachable not in (await http.get(url)).text:  # its first check may be on its way
            await asyncio.sleep(0.05)
    assert redis_keys(redis.Redis.from_url(redis_tls.url("gateway"))) == []


async def test_when_the_master_dies_the_gateway_follows_the_sentinel_to_the_new_one(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, tmp_path: Path
) -> None:
    """The master is killed and the Sentinel promotes its replica: the gateway follows
    (new entries and spending are written there), and what it kept before (an entry, a
    record, a budget's spending) is there, replicated before the failover. The test
    waits for that (WAIT): Redis replicates asynchronously, and what a dying master had
    not passed on is lost (RELIABILITY.md)."""
    (tmp_path / "redis").mkdir()
    servers = RedisSentinelServers(tmp_path / "redis", replicas=1)
    servers.start()
    try:
        policy = tmp_path / "budgets.yaml"
        policy.write_text(POLICY)
        gateway = spawn(
            GATEWAY_CACHE="redis", GATEWAY_REDIS_URL=servers.url, GATEWAY_REDIS_TIMEOUT="2",
            GATEWAY_BUDGETS=str(policy), GATEWAY_CALLER="search", GATEWAY_CACHE_LOCAL_ENTRIES="0",
        )  # fmt: skip
        await gateway.start()
        keyed = (("idempotency-key", "order-10"),)
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            stub = Stub(channel)
            _, before = await call(stub, request_of(seed=23))
            made, _ = await call_trailers(stub, request_of(), metadata=keyed)
            old_master = servers.master_port
            await asyncio.to_thread(servers.kill_master)
            assert servers.master_port != old_master
            # Connections to the dead master fail (once each), and the gateway asks the
            # Sentinel again; GetBudget (free) is the probe.
            budget = await until_answered(stub)
            _, after = await call(stub, request_of(seed=23))
            again, again_trailers = await call_trailers(stub, request_of(), metadata=keyed)
            # New writes land on the new master.
            written = [(await call(stub, request_of(seed=24)))[1] for _ in range(2)]
            spent = await stub.GetBudget(generation_pb2.GetBudgetRequest(), timeout=10)
        assert (before, after) == ("miss", "hit")
        assert again_trailers["x-idempotent-replay"] == "true"
        assert list(again.outputs) == list(made.outputs)
        assert budget.shared and [(w.spent, w.reserved) for w in budget.windows] == [(2, 0)]
        assert written == ["miss", "hit"]
        assert [w.spent for w in spent.windows] == [BUDGET]
        assert upstream_calls(emulator) == 3
        new_master = redis.Redis.from_url(servers.master_url)
        kinds = {key.split(":")[2] for key in redis_keys(new_master)}
        assert {"gen", "balance", "idem", "budget"} <= kinds, kinds
    finally:
        servers.stop()


async def until_answered(stub: Stub, attempts: int = 20) -> generation_pb2.GetBudgetResponse:
    """GetBudget, asked again (at most `attempts` times) while Redis is failing over."""
    for _ in range(attempts - 1):
        try:
            return await stub.GetBudget(generation_pb2.GetBudgetRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.1)  # a retry pause, not an ordering
    return await stub.GetBudget(generation_pb2.GetBudgetRequest(), timeout=10)
