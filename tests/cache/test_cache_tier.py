"""The in-process first tier in front of a shared backend: hits without the backend, hits
and coalescing through an outage, write-back once it answers again, and a cache result
that the response and the metric agree on. A fake clock and an in-memory backend."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import CachingGenerator
from gateway.cache_backend import BackendGuard, BackendUnavailable, FailOpenEntries
from gateway.cache_coordinator import CrossReplicaCoordinator
from gateway.cache_store import MemoryStore
from gateway.cache_tier import LocalTier
from gateway.call import cache_result_name
from gateway.events import CacheBackendFailed, CacheDecided
from gateway.generation import Generator
from tests.cache.cache_fakes import (
    AnsweringGenerator,
    CacheResult,
    FlakyEntries,
    ManualGenerator,
    MemoryShared,
    Recorder,
    answer,
    generation_call,
    until,
)
from tests.conftest import FakeClock

TTL = 600.0


class Replica:
    """One gateway on a shared in-memory backend, with or without a first tier."""

    def __init__(
        self,
        clock: FakeClock,
        entries: FlakyEntries,
        shared: MemoryShared,
        generator: Generator,
        *,
        tier: bool = True,
        tier_ttl: float = 60.0,
        ttl: float = TTL,
    ) -> None:
        self.recorder = Recorder()
        self.tier = (
            LocalTier(
                MemoryStore(max_entries=100, max_bytes=1 << 20, clock=clock),
                ttl=tier_ttl,
                max_unsynced=100,
                clock=clock,
            )
            if tier
            else None
        )
        guard = BackendGuard(timeout=5.0, clock=clock)
        self.cache = CachingGenerator(
            generator,
            FailOpenEntries(entries, guard),
            ttl=ttl,
            upstream_timeout=600,
            coordinator=CrossReplicaCoordinator(
                shared, entries, guard, clock=clock, upstream_timeout=600
            ),
            local=self.tier,
            telemetry=self.recorder,
        )

    def decisions(self) -> list[str]:
        return [e.result for e in self.recorder.of(CacheDecided)]  # type: ignore[attr-defined]

    def backend_failures(self) -> list[str]:
        return [e.operation for e in self.recorder.of(CacheBackendFailed)]  # type: ignore[attr-defined]


def world(
    generator: Generator | None = None, **kw: object
) -> tuple[FakeClock, FlakyEntries, MemoryShared, Replica]:
    clock = FakeClock()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    replica = Replica(clock, entries, shared, generator or AnsweringGenerator(), **kw)  # type: ignore[arg-type]
    return clock, entries, shared, replica


def down(entries: FlakyEntries, shared: MemoryShared, is_down: bool = True) -> None:
    entries.down = shared.down = is_down


@pytest.mark.parametrize("tier", [True, False], ids=["with-tier", "without-tier"])
async def test_local_duplicates_coalesce_during_an_outage(tier: bool) -> None:
    # The flights in one process need no backend: this held before the tier too.
    generator = ManualGenerator()
    _, entries, shared, replica = world(generator, tier=tier)
    down(entries, shared)
    calls = [asyncio.create_task(replica.cache.generate(generation_call(seed=3))) for _ in range(5)]
    await generator.started(1)
    await until(lambda: len(replica.decisions()) == 4)
    generator.succeed(0)
    results = [r.cache_result for r in await asyncio.gather(*calls)]
    assert len(generator.calls) == 1
    assert sorted(results) == sorted(
        [CacheResult.CACHE_RESULT_MISS] + [CacheResult.CACHE_RESULT_COALESCED] * 4
    )
    assert sorted(replica.decisions()) == sorted(cache_result_name(r) for r in results)


async def test_without_the_tier_an_outage_pays_for_every_repeat() -> None:
    # What the tier fixes: nothing kept the answer while the backend was away.
    generator = AnsweringGenerator()
    _, entries, shared, replica = world(generator, tier=False)
    down(entries, shared)
    results = [(await replica.cache.generate(generation_call(seed=4))).cache_result for _ in "abc"]
    assert results == [CacheResult.CACHE_RESULT_MISS] * 3
    assert len(generator.calls) == 3


async def test_an_outage_pays_for_each_seed_once_and_serves_the_repeats_from_the_tier() -> None:
    generator = AnsweringGenerator()
    _, entries, shared, replica = world(generator)
    down(entries, shared)
    rounds = []
    for _ in range(4):
        served = await asyncio.gather(
            *(replica.cache.generate(generation_call(seed=seed)) for seed in range(30))
        )
        rounds.append({cache_result_name(s.cache_result) for s in served})
    assert len(generator.calls) == 30
    assert rounds == [{"miss"}, {"hit"}, {"hit"}, {"hit"}]
    # The metric says what the responses said; the backend's failures are counted apart:
    # one failed lookup and one failed store per generation, none for a hit.
    assert sorted(replica.decisions()) == sorted(["miss"] * 30 + ["hit"] * 90)
    assert sorted(replica.backend_failures()) == ["lookup"] * 30 + ["store"] * 30
    assert replica.tier is not None and replica.tier.unsynced == 30


async def test_a_hit_in_the_tier_does_not_read_the_backend_s_entry() -> None:
    _, entries, _, replica = world()
    await replica.cache.generate(generation_call(seed=5))
    touched = entries.operations
    hit = await replica.cache.generate(generation_call(seed=5))
    assert hit.cache_result == CacheResult.CACHE_RESULT_HIT
    assert entries.operations == touched


async def test_a_backend_hit_is_kept_in_the_tier_for_the_outage() -> None:
    clock = FakeClock()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    other = Replica(clock, entries, shared, AnsweringGenerator())
    generator = AnsweringGenerator()
    replica = Replica(clock, entries, shared, generator)
    await other.cache.generate(generation_call(seed=6))  # stored in the backend
    first = await replica.cache.generate(generation_call(seed=6))
    down(entries, shared)
    second = await replica.cache.generate(generation_call(seed=6))
    assert (first.cache_result, second.cache_result) == (CacheResult.CACHE_RESULT_HIT,) * 2
    assert generator.calls == []
    assert replica.backend_failures() == []


async def test_the_tier_keeps_an_entry_no_longer_than_its_ttl_nor_the_cache_s() -> None:
    generator = AnsweringGenerator()
    clock, entries, shared, replica = world(generator, tier_ttl=30.0, ttl=10.0)
    down(entries, shared)
    await replica.cache.generate(generation_call(seed=7))
    clock.advance(9.0)
    assert (await replica.cache.generate(generation_call(seed=7))).cache_result == (
        CacheResult.CACHE_RESULT_HIT
    )
    clock.advance(2.0)  # past the cache's TTL (shorter than the tier's)
    assert (await replica.cache.generate(generation_call(seed=7))).cache_result == (
        CacheResult.CACHE_RESULT_MISS
    )
    assert len(generator.calls) == 2


async def test_what_the_outage_kept_from_the_backend_is_written_back_once_it_answers() -> None:
    clock = FakeClock()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    replica = Replica(clock, entries, shared, AnsweringGenerator())
    down(entries, shared)
    for seed in (1, 2, 3):
        await replica.cache.generate(generation_call(seed=seed))
    assert entries.values == {}
    clock.advance(5.0)
    down(entries, shared, False)
    clock.advance(1.0)  # the outage circuit tries the backend again
    await replica.cache.generate(generation_call(seed=1))  # a tier hit starts the write-back
    tier = replica.tier
    assert tier is not None
    await until(lambda: len(entries.values) == 3 and tier.unsynced == 0)
    # For what is left of the cache's TTL, counted from when each was generated.
    assert all(ttl == pytest.approx(TTL - 6.0) for ttl in entries.ttls.values())
    # Another gateway on the backend now pays for none of them.
    generator = AnsweringGenerator()
    other = Replica(clock, entries, shared, generator)
    served = [await other.cache.generate(generation_call(seed=s)) for s in (1, 2, 3)]
    assert {s.cache_result for s in served} == {CacheResult.CACHE_RESULT_HIT}
    assert generator.calls == []


async def test_a_write_back_is_tried_at_most_once_a_second_and_keeps_what_failed() -> None:
    clock = FakeClock()
    tier = LocalTier(
        MemoryStore(max_entries=10, max_bytes=1 << 20, clock=clock),
        ttl=60.0,
        max_unsynced=2,
        clock=clock,
    )
    for key in ("a", "b", "c"):
        await tier.keep(key, key.encode(), TTL)
        tier.not_stored(key, TTL)
    assert tier.unsynced == 2  # bounded: the oldest is dropped (re-generated if asked for)
    written: dict[str, bytes] = {}
    failing = True

    async def put(key: str, value: bytes, ttl: float) -> None:
        if failing:
            raise BackendUnavailable("ConnectionError")
        written[key] = value

    assert tier.write_back_due
    assert await tier.write_back(put) == 0
    assert not tier.write_back_due and tier.unsynced == 2
    clock.advance(1.0)
    failing = False
    assert tier.write_back_due
    assert await tier.write_back(put) == 2
    assert written == {"b": b"b", "c": b"c"} and not tier.write_back_due


async def test_a_tier_hit_reports_the_newest_balance_any_gateway_saw() -> None:
    clock = FakeClock()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    generator = ManualGenerator()
    replica = Replica(clock, entries, shared, generator)
    first = asyncio.create_task(replica.cache.generate(generation_call(seed=8)))
    await generator.started(1)
    generator.succeed(0, answer(credits=98, started_at=1))
    await first
    other_upstream = ManualGenerator()
    other = Replica(clock, entries, shared, other_upstream)
    unseeded = asyncio.create_task(other.cache.generate(generation_call(seed=None)))
    await other_upstream.started(1)
    other_upstream.succeed(0, answer(credits=90, started_at=5))
    await unseeded
    hit = await replica.cache.generate(generation_call(seed=8))
    assert (hit.cache_result, hit.response.remaining_credits) == (CacheResult.CACHE_RESULT_HIT, 90)
    # Without the backend, the newest this gateway saw itself.
    down(entries, shared)
    hit = await replica.cache.generate(generation_call(seed=8))
    assert (hit.cache_result, hit.response.remaining_credits) == (CacheResult.CACHE_RESULT_HIT, 98)


async def test_a_call_served_by_another_gateway_s_generation_is_counted_coalesced() -> None:
    clock = FakeClock()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    leader_upstream = ManualGenerator()
    leader = Replica(clock, entries, shared, leader_upstream)
    waiter = Replica(clock, entries, shared, ManualGenerator())
    first = asyncio.create_task(leader.cache.generate(generation_call(seed=9)))
    await leader_upstream.started(1)
    second = asyncio.create_task(waiter.cache.generate(generation_call(seed=9)))
    await until(lambda: waiter.cache.waiting_on_other_gateways == 1)
    leader_upstream.succeed(0)
    await first
    while not second.done():  # the waiter polls the backend on the clock
        clock.advance(0.05)
        await asyncio.sleep(0)
    served = await second
    assert served.cache_result == CacheResult.CACHE_RESULT_COALESCED
    assert (leader.decisions(), waiter.decisions()) == (["miss"], ["coalesced"])
