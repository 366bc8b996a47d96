"""Budgets through a real gateway and the emulator: reserve before spending, exact under a
burst, refunds released, possible charges kept, cache hits free, windows reset, the policy
file reloaded, and the Redis ledger's failure setting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.app import GatewayApp, Seams
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, FakeClock, GatewayFactory
from tests.fixtures import call, eventually, request, upstream_calls
from tests.services import RedisServer
from tests.status import rich_error


async def outcome(app: GatewayApp, **fields: object) -> str:
    """OK, or the refusal's gRPC code and ErrorInfo reason."""
    try:
        await call(app, request(**{"num_outputs": 1, **fields}), timeout=10)
    except grpc.aio.AioRpcError as error:
        found = rich_error(error)
        return f"{error.code().name} {found.info.reason if found.info else ''}"
    return "OK"


def spent(emulator: Emulator) -> int:
    return INITIAL_CREDITS - emulator.balance(ACCOUNT_KEY)


def gauge(app: GatewayApp, name: str, **labels: str) -> float | None:
    return app.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("ledger", ["memory", "redis"])
async def test_a_burst_spends_exactly_the_budget_and_nothing_more_reaches_the_upstream(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path, ledger: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    redis = {}
    if ledger == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        # A generous Redis timeout: on a loaded machine the default 0.25 s can run out, and
        # budgets then fail closed, which is another test's subject.
        redis = {"cache": "redis", "redis_url": server.url, "redis_timeout": 2.0}
    app = await make_gateway(caller="search", budgets=policy_file, **redis)
    outcomes = await asyncio.gather(*(outcome(app) for _ in range(30)))
    assert outcomes.count("OK") == 6
    assert outcomes.count("RESOURCE_EXHAUSTED BUDGET_EXHAUSTED") == 24
    assert spent(emulator) == 6
    assert upstream_calls(emulator) == 6
    assert gauge(app, "stablecog_budget_spent_credits", caller="search", window="day") == 6
    assert gauge(app, "stablecog_budget_remaining_credits", caller="search", window="day") == 0
    assert gauge(app, "stablecog_budget_rejections_total", caller="search", reason="day") == 24
    assert gauge(app, "stablecog_budget_reservations_in_flight") == 0
    budget = await get_budget(app)
    assert (budget.windows[0].spent, budget.shared) == (6, ledger == "redis")


async def test_a_refusal_names_the_budget_and_when_it_resets(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    clock = FakeClock(wall=1_700_000_000.0)  # 2023-11-14 22:13:20 UTC
    app = await make_gateway(Seams(clock=clock), caller="search", budgets=policy_file)
    assert await outcome(app, num_outputs=4) == "OK"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(num_outputs=4), timeout=10)
    found = rich_error(caught.value)
    assert found.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert found.info is not None and found.info.reason == "BUDGET_EXHAUSTED"
    assert (found.info.metadata["window"], found.info.metadata["spent"]) == ("day", "4")
    assert [(v.subject, v.quota_id, v.quota_value) for v in found.quota] == [
        ("caller:search", "credits-per-day", 6)
    ]
    assert found.retry_delay == pytest.approx(6400.0)  # to midnight UTC
    assert upstream_calls(emulator) == 1


async def test_the_next_window_admits_again(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    clock = FakeClock(wall=1_700_000_000.0)
    app = await make_gateway(Seams(clock=clock), caller="search", budgets=policy_file)
    assert [await outcome(app, num_outputs=3) for _ in range(3)] == [
        "OK",
        "OK",
        "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED",
    ]
    clock.advance(6400.0)  # midnight UTC: a new day
    assert await outcome(app, num_outputs=3) == "OK"
    assert spent(emulator) == 9


async def test_cache_hits_and_coalesced_calls_cost_nothing(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    app = await make_gateway(caller="search", budgets=policy_file)
    emulator.set_latency(0.2)
    outcomes = await asyncio.gather(*(outcome(app, num_outputs=4, seed=7) for _ in range(5)))
    assert outcomes == ["OK"] * 5
    assert await outcome(app, num_outputs=4, seed=7) == "OK"  # a hit
    assert spent(emulator) == 4
    assert await outcome(app, num_outputs=3, seed=8) == "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"


@pytest.mark.parametrize(
    ("fault", "kept"),
    [
        ({"mode": "nsfw_prompt"}, 0),  # the upstream's validation: nothing charged
        ({"mode": "worker_failure"}, 0),  # charged, then refunded
        ({"mode": "drop_connection", "charge": True}, 3),  # may have been charged
    ],
)
async def test_refunds_release_and_possible_charges_keep(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path,
    fault: dict[str, object], kept: int,
) -> None:  # fmt: skip
    app = await make_gateway(caller="search", budgets=policy_file)
    emulator.faults.inject(str(fault.pop("mode")), 1, **fault)
    assert await outcome(app, num_outputs=3) != "OK"
    status = await app.budgets.status("search")  # type: ignore[union-attr]
    assert (status.windows[0].spent, status.windows[0].reserved) == (kept, 0)
    assert status.in_flight == 0
    assert gauge(app, "stablecog_budget_spent_credits", caller="search", window="day") == kept


async def test_max_in_flight_refuses_a_second_generation_at_once(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    app = await make_gateway(caller="batch", budgets=policy_file)
    emulator.set_latency(5.0)
    first = asyncio.ensure_future(outcome(app))
    await emulator.wait_for_requests("/v1/image/generation/create", 1)
    assert await outcome(app) == "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first


async def test_an_unlisted_caller_without_a_default_is_refused(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    app = await make_gateway(caller="stranger", budgets=policy_file)
    assert await outcome(app) == "PERMISSION_DENIED CALLER_NOT_PERMITTED"
    assert upstream_calls(emulator) == 0


async def test_a_changed_policy_applies_and_a_broken_one_keeps_the_last_good(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    app = await make_gateway(caller="search", budgets=policy_file)
    assert [await outcome(app, num_outputs=3) for _ in range(2)] == ["OK", "OK"]
    assert await outcome(app) == "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"
    # A ConfigMap update: a new file swapped in under the same name.
    new = policy_file.with_name("new.yaml")
    new.write_text("callers:\n  search:\n    credits: {day: 8}\n")
    new.replace(policy_file)
    await eventually(lambda: app.budgets.policy.callers["search"].credits["day"] == 8)  # type: ignore[union-attr]
    assert await outcome(app, num_outputs=2) == "OK"
    broken = policy_file.with_name("broken.yaml")
    broken.write_text("callers:\n  search:\n    credits: {day: lots}\n")
    broken.replace(policy_file)
    caplog.set_level(logging.ERROR, logger="gateway.watched_file")
    await eventually(lambda: gauge(app, "stablecog_budget_policy_valid") == 0)
    assert any("invalid" in r.getMessage() for r in caplog.records)
    assert app.budgets.policy.callers["search"].credits["day"] == 8  # type: ignore[union-attr]
    assert await outcome(app) == "RESOURCE_EXHAUSTED BUDGET_EXHAUSTED"  # never falls open
    assert spent(emulator) == 8


@pytest.mark.parametrize(
    ("down", "expected"), [("closed", "UNAVAILABLE BUDGET_STORE_UNAVAILABLE"), ("open", "OK")]
)
async def test_redis_down_fails_closed_or_open_as_configured(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path,
    redis_server: RedisServer, down: str, expected: str,
) -> None:  # fmt: skip
    app = await make_gateway(
        caller="search", budgets=policy_file, budgets_redis=redis_server.url,
        budgets_redis_down=down,
    )  # fmt: skip
    assert await outcome(app) == "OK"
    redis_server.stop()
    assert await outcome(app) == expected
    assert gauge(app, "stablecog_budget_store_failures_total", decision=down) == 1
    assert upstream_calls(emulator) == (2 if down == "open" else 1)


async def get_budget(app: GatewayApp, **kw: object) -> generation_pb2.GetBudgetResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return await stub.GetBudget(generation_pb2.GetBudgetRequest(), timeout=10, **kw)  # type: ignore[arg-type]


async def test_get_budget_tells_a_caller_its_own_limits_use_and_reset(
    make_gateway: GatewayFactory, emulator: Emulator, policy_file: Path
) -> None:
    clock = FakeClock(wall=1_700_000_000.0)
    app = await make_gateway(Seams(clock=clock), caller="search", budgets=policy_file)
    assert await outcome(app, num_outputs=4) == "OK"
    # x-caller cannot ask about another caller's budget.
    budget = await get_budget(app, metadata=(("x-caller", "batch"),))
    assert (budget.caller, budget.permitted, budget.shared) == ("search", True, False)
    assert not budget.HasField("max_in_flight")
    [day] = budget.windows
    assert (day.window, day.limit, day.spent, day.reserved, day.remaining) == ("day", 6, 4, 0, 2)
    assert day.resets_at.ToSeconds() == 1_700_006_400  # midnight UTC
    assert upstream_calls(emulator) == 1


async def test_get_budget_without_a_budget(make_gateway: GatewayFactory, policy_file: Path) -> None:
    refused = await make_gateway(caller="stranger", budgets=policy_file)
    assert (await get_budget(refused)).permitted is False
    unlimited = await make_gateway(caller="anyone")
    budget = await get_budget(unlimited)
    assert (budget.caller, budget.permitted, len(budget.windows)) == ("anyone", True, 0)
