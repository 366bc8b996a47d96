"""Budget defects found in review (issue 12), each proven against real parts: a real
gateway, the emulator, a real Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from emulator.server import Emulator
from gateway.app import GatewayApp
from gateway.budget_policy import parse_policy
from gateway.identity import token_digest
from gateway.watched_file import WatchedFile
from tests.conftest import FakeClock, GatewayFactory
from tests.fixtures import call, eventually, request, upstream_calls
from tests.services import RedisServer
from tests.status import rich_error

TWO_CALLERS = """
callers:
  search:
    credits: {day: 6}
  broke:
    credits: {day: 0}
"""


def _as(caller: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer gw-token-{caller}"),)


async def _outcome(app: GatewayApp, caller: str, **fields: object) -> str:
    try:
        await call(app, request(**{"num_outputs": 1, **fields}), metadata=_as(caller), timeout=20)
    except grpc.aio.AioRpcError as error:
        found = rich_error(error)
        return f"{error.code().name} {found.info.reason if found.info else ''}"
    return "OK"


def _coalesced(app: GatewayApp) -> float:
    value = app.registry.get_sample_value("stablecog_cache_requests_total", {"result": "coalesced"})
    return value or 0.0


async def test_a_waiter_never_inherits_the_leaders_budget_refusal(
    make_gateway: GatewayFactory, emulator: Emulator, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Caller `broke` leads a flight and is refused by its own budget; `search`, which
    coalesced on it with budget to spare, must be served (and never see broke's budget)."""
    policy = tmp_path / "budgets.yaml"
    policy.write_text(TWO_CALLERS)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "".join(f"{c}: {token_digest(f'gw-token-{c}')}\n" for c in ("search", "broke"))
    )
    app = await make_gateway(
        identity="token", caller_tokens=tokens, x_caller="ignore", budgets=policy,
        budgets_redis=redis_server.url, redis_timeout=10.0,
    )  # fmt: skip
    admin = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        await admin.ping()
        # Hold broke's reservation in Redis until search has joined broke's flight.
        await admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        broke = asyncio.ensure_future(_outcome(app, "broke", seed=11))
        await eventually(lambda: app.cache is not None and app.cache.flights == 1)
        search = asyncio.ensure_future(_outcome(app, "search", seed=11))
        await eventually(lambda: _coalesced(app) == 1)
        await admin.execute_command("CLIENT", "UNPAUSE")
        assert await broke == "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"
        assert await search == "OK"
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    assert upstream_calls(emulator) == 1
    status = await app.budgets.status("search")  # type: ignore[union-attr]
    assert status.windows[0].spent == 1


async def test_a_replica_on_an_older_policy_never_wipes_a_window_it_does_not_know(
    make_gateway: GatewayFactory, emulator: Emulator, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Mid-rollout of a ConfigMap, replicas read different policies: one that does not yet
    know a caller's hourly window must not delete that window's spending from Redis."""
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text("callers:\n  search:\n    credits: {hour: 3, day: 100}\n")
    old.write_text("callers:\n  search:\n    credits: {day: 100}\n")
    shared = {"caller": "search", "budgets_redis": redis_server.url, "redis_timeout": 5.0}
    updated = await make_gateway(budgets=new, **shared)
    lagging = await make_gateway(budgets=old, **shared)
    assert [await _sidecar(updated) for _ in range(4)] == ["OK"] * 3 + [BUDGET]
    assert await _sidecar(lagging) == "OK"
    assert await _sidecar(updated) == BUDGET  # the hour's 3 credits are still spent
    assert upstream_calls(emulator) == 4


BUDGET = "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"


async def _sidecar(app: GatewayApp) -> str:
    try:
        await call(app, request(num_outputs=1), timeout=20)
    except grpc.aio.AioRpcError as error:
        found = rich_error(error)
        return f"{error.code().name} {found.info.reason if found.info else ''}"
    return "OK"


@pytest.mark.parametrize("change", ["deleted", "directory", "binary"])
def test_an_unreadable_policy_file_keeps_the_last_good_one_and_says_so(
    tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(TWO_CALLERS)
    clock = FakeClock()
    told: list[bool] = []
    policy = WatchedFile(path, parse_policy, what="budget policy file", clock=clock)
    policy.on_validity = told.append
    good = policy.current()
    path.unlink()
    if change == "directory":
        path.mkdir()
    elif change == "binary":
        path.write_bytes(b"\xff\xfe\x00callers")
    caplog.set_level(logging.ERROR, logger="gateway.watched_file")
    for _ in range(3):
        clock.advance(2.0)
        assert policy.current() == good
    assert (policy.valid, told) == (False, [False])  # the metric shows it, once
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    if change == "directory":
        path.rmdir()
    path.write_text(TWO_CALLERS)  # the same content back
    clock.advance(2.0)
    assert policy.current() == good
    assert (policy.valid, told) == (True, [False, True])
