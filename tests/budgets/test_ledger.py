"""The ledger rules (gateway.budget_ledger), the same for this process's ledger and for the
Lua scripts in a real Redis: admission is exact under concurrency, settling spends what was
charged, releasing frees, and a reservation its gateway lost expires as spent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.budget_ledger import NO_LIMIT, Ledger, MemoryLedger, WindowState
from gateway.budget_ledger_redis import RedisLedger, caller_keys
from tests.services import RedisServer

NOW = 1_700_000_000.0
DAY = [("day:20231114", 10)]


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_ledger = RedisLedger.from_url(server.url, timeout=2.0)
    try:
        yield redis_ledger
    finally:
        await redis_ledger.aclose()


async def reserve(
    ledger: Ledger, rid: str, cost: int, *, windows: list[tuple[str, int]] = DAY,
    max_in_flight: int = NO_LIMIT, now: float = NOW, lease: float = 60.0,
) -> int:  # fmt: skip
    reserved = await ledger.reserve(
        "search", rid, cost, windows, max_in_flight=max_in_flight, now=now, expires_at=now + lease
    )
    return reserved.refused


async def test_concurrent_reservations_never_overshoot(ledger: Ledger) -> None:
    outcomes = await asyncio.gather(*(reserve(ledger, f"r{i}", 1) for i in range(50)))
    assert outcomes.count(0) == 10
    assert set(outcomes) == {0, 1}
    assert await ledger.usage("search", ["day:20231114"], now=NOW) == (10, (WindowState(0, 10),))


async def test_settle_spends_the_actual_cost_and_release_frees(ledger: Ledger) -> None:
    assert await reserve(ledger, "a", 4) == 0
    assert await reserve(ledger, "b", 4) == 0
    assert await reserve(ledger, "c", 4) == 1  # 4 + 4 + 4 > 10
    await ledger.settle("search", "a", 3, now=NOW)
    await ledger.settle("search", "b", 0, now=NOW)
    assert await ledger.usage("search", ["day:20231114"], now=NOW) == (0, (WindowState(3, 0),))
    assert await reserve(ledger, "c", 7) == 0
    await ledger.settle("search", "c", 7, now=NOW)
    await ledger.settle("search", "c", 7, now=NOW)  # settled twice: once counts
    assert await ledger.usage("search", ["day:20231114"], now=NOW) == (0, (WindowState(10, 0),))
    assert await reserve(ledger, "d", 1) == 1


async def test_the_first_full_window_refuses_and_each_window_counts(ledger: Ledger) -> None:
    windows = [("hour:2023111422", 3), ("day:20231114", 10)]
    assert await reserve(ledger, "a", 3, windows=windows) == 0
    assert await reserve(ledger, "b", 1, windows=windows) == 1
    await ledger.settle("search", "a", 3, now=NOW)
    # The next hour: a new hour window, the same day.
    next_hour = [("hour:2023111423", 3), ("day:20231114", 10)]
    assert await reserve(ledger, "b", 3, windows=next_hour, now=NOW + 3600) == 0
    state = await ledger.usage("search", [w for w, _ in next_hour], now=NOW + 3600)
    assert state == (1, (WindowState(0, 3), WindowState(3, 3)))


async def test_max_in_flight(ledger: Ledger) -> None:
    assert await reserve(ledger, "a", 1, max_in_flight=1) == 0
    assert await reserve(ledger, "b", 1, max_in_flight=1) == -1
    await ledger.settle("search", "a", 1, now=NOW)
    assert await reserve(ledger, "b", 1, max_in_flight=1) == 0


async def test_a_lost_reservation_expires_as_spent(ledger: Ledger) -> None:
    assert await reserve(ledger, "crashed", 4, lease=30.0) == 0
    assert await ledger.usage("search", ["day:20231114"], now=NOW + 29) == (1, (WindowState(0, 4),))
    assert await ledger.usage("search", ["day:20231114"], now=NOW + 31) == (0, (WindowState(4, 0),))
    await ledger.settle("search", "crashed", 0, now=NOW + 32)  # too late to release
    assert await ledger.usage("search", ["day:20231114"], now=NOW + 33) == (0, (WindowState(4, 0),))


def test_a_callers_keys_share_one_hash_slot_and_hide_its_name() -> None:
    keys = caller_keys("search")
    tags = {key[key.index("{") + 1 : key.index("}")] for key in keys}
    assert len(tags) == 1
    assert not any("search" in key for key in keys)


async def test_only_windows_neither_asked_for_nor_live_are_forgotten(ledger: Ledger) -> None:
    hour = [("hour:2023111422", 3)]
    assert await reserve(ledger, "a", 3, windows=hour) == 0
    await ledger.settle("search", "a", 3, now=NOW)
    # Another replica's policy names only the day, but the hour is live: it is kept.
    live = ["day:20231114", "hour:2023111422"]
    for rid in ("b", "c"):
        refused = await ledger.reserve(
            "search", rid, 1, DAY, max_in_flight=NO_LIMIT, now=NOW, expires_at=NOW + 60, live=live
        )
        assert refused.refused == 0
    assert await reserve(ledger, "d", 1, windows=hour) == 1
    # Once the hour is over (no longer live), the next reservation forgets it.
    refused = await ledger.reserve(
        "search", "e", 1, DAY, max_in_flight=NO_LIMIT, now=NOW, expires_at=NOW + 60,
        live=["day:20231114"],
    )  # fmt: skip
    assert refused.refused == 0
    assert await ledger.usage("search", ["hour:2023111422"], now=NOW) == (3, (WindowState(0, 0),))
