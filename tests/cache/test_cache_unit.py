"""The cache in isolation: coalescing, cancellation, deadlines, fail-open and the
cross-replica protocol, driven by a generator the test answers by hand, an in-memory
shared backend and a fake clock. No test here waits on real time to order events."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import CachingGenerator
from gateway.cache_backend import BackendGuard, BackendMisbehaved, FailOpenEntries
from gateway.cache_coordinator import (
    LOCK_LEASE_SECONDS,
    POLL_SECONDS,
    CrossReplicaCoordinator,
    encode_outcome,
)
from gateway.cache_key import cache_key
from gateway.cache_store import MemoryStore
from gateway.call import CacheControl
from gateway.errors import (
    CallTimedOut,
    GenerationAbandoned,
    UpstreamConnectionLost,
    WorkerFailed,
)
from gateway.events import CacheBackendFailed, CacheDecided
from tests.cache.cache_fakes import (
    KEY,
    CacheResult,
    FlakyEntries,
    ManualGenerator,
    MemoryShared,
    Recorder,
    answer,
    generation_call,
    settle,
    until,
)
from tests.conftest import FakeClock


def local_cache(
    generator: ManualGenerator, clock: FakeClock, recorder: Recorder | None = None
) -> tuple[CachingGenerator, MemoryStore]:
    store = MemoryStore(max_entries=100, max_bytes=1 << 20, clock=clock)
    cache = CachingGenerator(
        generator,
        store,
        ttl=60,
        upstream_timeout=600,
        telemetry=recorder or Recorder(),
        min_generation_seconds=0.0,  # these tests cut calls with deadlines of milliseconds
    )
    return cache, store


def decisions(recorder: Recorder) -> list[str]:
    return [e.result for e in recorder.of(CacheDecided)]  # type: ignore[attr-defined]


def backend_failures(recorder: Recorder) -> list[str]:
    return [e.operation for e in recorder.of(CacheBackendFailed)]  # type: ignore[attr-defined]


# --- in one process ---


async def test_identical_concurrent_calls_share_one_generation() -> None:
    clock, generator, recorder = FakeClock(), ManualGenerator(), Recorder()
    cache, store = local_cache(generator, clock, recorder)
    calls = [asyncio.create_task(cache.generate(generation_call(seed=5))) for _ in range(5)]
    await generator.started(1)
    # The four that joined are counted at once; the one generating once it is answered.
    await until(lambda: len(decisions(recorder)) == 4)
    generator.succeed(0, answer(credits=90))
    results = await asyncio.gather(*calls)
    assert len(generator.calls) == 1
    assert sorted(r.cache_result for r in results) == sorted(
        [CacheResult.CACHE_RESULT_MISS] + [CacheResult.CACHE_RESULT_COALESCED] * 4
    )
    assert all(list(r.response.outputs) == list(results[0].response.outputs) for r in results)
    # Only the call that made the upstream request reports its upstream time.
    assert sorted(r.upstream_seconds is None for r in results) == [False] + [True] * 4
    assert decisions(recorder) == ["coalesced"] * 4 + ["miss"]
    assert len(store) == 1 and cache.flights == 0


async def test_a_stored_entry_is_served_with_the_newest_balance() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, _ = local_cache(generator, clock)
    first = asyncio.create_task(cache.generate(generation_call(seed=1)))
    await generator.started(1)
    generator.succeed(0, answer(credits=99, started_at=10))
    await first
    other = asyncio.create_task(cache.generate(generation_call(seed=None)))  # unseeded: paid
    await generator.started(2)
    generator.succeed(1, answer(credits=95, started_at=20))
    assert (await other).cache_result == CacheResult.CACHE_RESULT_UNCACHEABLE
    hit = await cache.generate(generation_call(seed=1))
    assert hit.cache_result == CacheResult.CACHE_RESULT_HIT
    assert hit.response.remaining_credits == 95
    assert len(generator.calls) == 2


async def test_cache_control_bypasses_and_no_store_keeps_nothing() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, store = local_cache(generator, clock)
    no_store = asyncio.create_task(
        cache.generate(generation_call(cache_control=CacheControl(lookup=False, store=False)))
    )
    await generator.started(1)
    generator.succeed(0)
    assert (await no_store).cache_result == CacheResult.CACHE_RESULT_BYPASS
    assert len(store) == 0
    no_cache = asyncio.create_task(
        cache.generate(generation_call(cache_control=CacheControl(lookup=False, store=True)))
    )
    await generator.started(2)
    generator.succeed(1)
    assert (await no_cache).cache_result == CacheResult.CACHE_RESULT_BYPASS
    assert len(store) == 1


async def test_a_cancelled_first_caller_leaves_the_generation_to_the_others() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, store = local_cache(generator, clock)
    first = asyncio.create_task(cache.generate(generation_call(seed=3)))
    await generator.started(1)
    second = asyncio.create_task(cache.generate(generation_call(seed=3)))
    await until(lambda: cache.flights == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    generator.succeed(0)
    assert (await second).cache_result == CacheResult.CACHE_RESULT_COALESCED
    assert len(store) == 1 and len(generator.calls) == 1
    # The upstream call was made without the first caller's deadline.
    assert generator.calls[0].budget.caller_deadline is False


async def test_a_caller_whose_deadline_ends_gets_deadline_exceeded_and_the_flight_goes_on() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, store = local_cache(generator, clock)
    with pytest.raises(CallTimedOut) as caught:
        # The deadline is the thing under test: it runs out while nobody answers.
        await cache.generate(generation_call(seed=4, deadline=0.01))
    assert caught.value.reason == "DEADLINE_EXCEEDED"
    assert cache.flights == 1
    generator.succeed(0)
    await cache.wait_idle()
    hit = await cache.generate(generation_call(seed=4))
    assert hit.cache_result == CacheResult.CACHE_RESULT_HIT
    assert len(generator.calls) == 1 and len(store) == 1


async def test_waiters_share_an_error_and_it_is_not_cached() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, store = local_cache(generator, clock)
    calls = [asyncio.create_task(cache.generate(generation_call(seed=6))) for _ in range(3)]
    await generator.started(1)
    await until(lambda: all(not c.done() for c in calls) and cache.flights == 1)
    generator.fail(0, WorkerFailed("failed and refunded"))
    for task in calls:
        with pytest.raises(WorkerFailed):
            await task
    assert len(generator.calls) == 1 and len(store) == 0
    again = asyncio.create_task(cache.generate(generation_call(seed=6)))
    await generator.started(2)
    generator.succeed(1)
    assert (await again).cache_result == CacheResult.CACHE_RESULT_MISS


async def test_an_answer_without_outputs_is_not_stored() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    cache, store = local_cache(generator, clock)
    task = asyncio.create_task(cache.generate(generation_call(seed=8)))
    await generator.started(1)
    generator.succeed(0, answer(outputs=0))
    assert len((await task).response.outputs) == 0
    assert len(store) == 0


# --- fail-open ---


def shared_cache(
    generator: ManualGenerator,
    clock: FakeClock,
    entries: FlakyEntries,
    shared: MemoryShared,
    recorder: Recorder | None = None,
) -> CachingGenerator:
    guard = BackendGuard(timeout=5.0, clock=clock)
    return CachingGenerator(
        generator,
        FailOpenEntries(entries, guard),
        ttl=60,
        upstream_timeout=600,
        coordinator=CrossReplicaCoordinator(
            shared, entries, guard, clock=clock, upstream_timeout=600
        ),
        telemetry=recorder or Recorder(),
    )


async def test_a_down_backend_never_fails_a_call_and_is_retried_a_second_later() -> None:
    clock, generator, recorder = FakeClock(), ManualGenerator(), Recorder()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    cache = shared_cache(generator, clock, entries, shared, recorder)
    entries.down = shared.down = True
    task = asyncio.create_task(cache.generate(generation_call(seed=9)))
    await generator.started(1)
    generator.succeed(0)
    served = await task
    # The call says what happened to it; the backend's failures are counted apart.
    assert served.cache_result == CacheResult.CACHE_RESULT_MISS
    assert decisions(recorder) == ["miss"]
    assert backend_failures(recorder) == ["lookup", "store"]
    # The circuit is open: the next lookup does not touch the backend at all.
    touched = entries.operations
    second = asyncio.create_task(cache.generate(generation_call(seed=9)))
    await generator.started(2)
    assert entries.operations == touched
    generator.succeed(1)
    await second
    # A second later, with the backend back, it is used again.
    entries.down = shared.down = False
    clock.advance(1.0)
    third = asyncio.create_task(cache.generate(generation_call(seed=9)))
    await generator.started(3)
    generator.succeed(2)
    await third
    assert entries.operations > touched
    hit = await cache.generate(generation_call(seed=9))
    assert hit.cache_result == CacheResult.CACHE_RESULT_HIT
    assert decisions(recorder) == ["miss", "miss", "miss", "hit"]
    assert backend_failures(recorder) == ["lookup", "store"] * 2


async def test_a_misbehaving_backend_fails_one_operation_only() -> None:
    clock = FakeClock()
    guard = BackendGuard(timeout=5.0, clock=clock)

    async def wrong_type() -> None:
        raise BackendMisbehaved("WRONGTYPE")

    with pytest.raises(BackendMisbehaved):
        await guard.run(wrong_type)
    assert not guard.down


async def test_our_own_bugs_are_not_hidden_as_backend_errors() -> None:
    clock, generator = FakeClock(), ManualGenerator()

    class Broken(FlakyEntries):
        async def get(self, key: str) -> bytes | None:
            raise KeyError("a bug in the gateway")

    entries = Broken()
    cache = shared_cache(generator, clock, entries, MemoryShared(clock))
    with pytest.raises(KeyError):
        await cache.generate(generation_call(seed=10))
    assert generator.calls == []


async def test_unreadable_entries_are_ignored() -> None:
    clock, generator = FakeClock(), ManualGenerator()
    entries, shared = FlakyEntries(), MemoryShared(clock)
    cache = shared_cache(generator, clock, entries, shared)
    entries.values[cache_key(generation_call(seed=11).request, KEY.cache_scope)] = b"\xff garbage"
    task = asyncio.create_task(cache.generate(generation_call(seed=11)))
    await generator.started(1)
    generator.succeed(0)
    assert (await task).cache_result == CacheResult.CACHE_RESULT_MISS


# --- across replicas ---


class Replicas:
    """Two gateways sharing one backend, each with its own upstream and circuit."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.entries = FlakyEntries()
        self.shared = MemoryShared(self.clock)
        self.upstreams = [ManualGenerator(), ManualGenerator()]
        self.caches = [
            shared_cache(g, self.clock, self.entries, self.shared) for g in self.upstreams
        ]

    @property
    def generations(self) -> int:
        return sum(len(g.calls) for g in self.upstreams)

    async def leader_and_waiter(
        self, seed: int
    ) -> tuple[asyncio.Task[object], asyncio.Task[object]]:
        leader = asyncio.create_task(self.caches[0].generate(generation_call(seed=seed)))
        await self.upstreams[0].started(1)
        waiter = asyncio.create_task(self.caches[1].generate(generation_call(seed=seed)))
        await self.polling(1)
        return leader, waiter  # type: ignore[return-value]

    async def polling(self, waiters: int) -> None:
        """Until `waiters` flights wait on another replica, asleep between polls."""
        await until(
            lambda: (
                sum(c._coordinator.waiting for c in self.caches if c._coordinator) == waiters
                and self.clock.sleepers >= waiters
            )
        )

    async def tick(self, seconds: float = POLL_SECONDS) -> None:
        """Move the clock one poll on and let the woken tasks run until they settle."""
        self.clock.advance(seconds)
        await settle(self.clock)

    async def drive(self, task: asyncio.Task[object], *, seconds: float = 30.0) -> object:
        """Tick the clock until `task` is done (bounded), then return its result."""
        for _ in range(int(seconds / POLL_SECONDS)):
            if task.done():
                break
            await self.tick()
        return await task


async def test_a_waiting_replica_is_served_the_leader_s_result() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=21)
    replicas.upstreams[0].succeed(0)
    a = await replicas.drive(leader)
    b = await replicas.drive(waiter)
    assert a.cache_result == CacheResult.CACHE_RESULT_MISS  # type: ignore[attr-defined]
    assert b.cache_result == CacheResult.CACHE_RESULT_COALESCED  # type: ignore[attr-defined]
    assert replicas.generations == 1
    assert replicas.shared.locks == {}


async def test_a_lease_outlives_a_long_generation() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=22)
    # Three leases' worth of polls: the leader refreshes its lease every quarter lease.
    for _ in range(int(3 * LOCK_LEASE_SECONDS / POLL_SECONDS)):
        await replicas.tick()
    assert not waiter.done() and replicas.generations == 1
    replicas.upstreams[0].succeed(0)
    await replicas.drive(leader)
    await replicas.drive(waiter)
    assert replicas.generations == 1


async def test_the_leader_s_error_reaches_the_waiter_without_a_second_charge() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=23)
    replicas.upstreams[0].fail(0, UpstreamConnectionLost("lost; may have been charged"))
    with pytest.raises(UpstreamConnectionLost):
        await replicas.drive(leader)
    with pytest.raises(UpstreamConnectionLost) as caught:
        await replicas.drive(waiter)
    assert caught.value.reason == "UPSTREAM_CONNECTION_LOST"
    assert replicas.generations == 1


async def test_a_leader_stopped_mid_call_tells_the_waiter_it_was_abandoned() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=24)
    leader.cancel()  # the caller leaves; the flight goes on
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert replicas.caches[0].flights == 1
    closing = asyncio.create_task(replicas.caches[0].aclose())  # shutdown: flights cancelled
    await replicas.drive(closing)  # type: ignore[arg-type]
    assert replicas.caches[0].flights == 0
    with pytest.raises(GenerationAbandoned):
        await replicas.drive(waiter)
    assert replicas.generations == 1


async def test_an_empty_answer_is_shared_not_paid_again() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=25)
    replicas.upstreams[0].succeed(0, answer(outputs=0))
    await replicas.drive(leader)
    b = await replicas.drive(waiter)
    assert len(b.response.outputs) == 0  # type: ignore[attr-defined]
    assert replicas.generations == 1
    assert replicas.entries.values == {}


async def test_a_holder_gone_with_nothing_published_lets_the_waiter_lead() -> None:
    replicas = Replicas()
    key = cache_key(generation_call(seed=26).request, KEY.cache_scope)
    # A holder that dies without publishing or unlocking: its lease simply runs out.
    replicas.shared.locks[key] = ("crashed gateway", replicas.clock.monotonic() + 1.0)
    waiter = asyncio.create_task(replicas.caches[1].generate(generation_call(seed=26)))
    await replicas.polling(1)
    polls = 0
    while not replicas.upstreams[1].calls:
        polls += 1
        assert polls < (1.0 + LOCK_LEASE_SECONDS) / POLL_SECONDS, "the waiter never led"
        await replicas.tick()
    # It waited out the lease and a third of a lease more before leading.
    assert replicas.clock.monotonic() - 1000.0 >= 1.0 + LOCK_LEASE_SECONDS / 3
    replicas.upstreams[1].succeed(0)
    assert (await replicas.drive(waiter)).cache_result == CacheResult.CACHE_RESULT_MISS  # type: ignore[attr-defined]
    assert replicas.generations == 1


async def test_a_waiter_serves_itself_once_the_backend_is_gone_for_a_whole_lease() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=27)
    replicas.entries.down = replicas.shared.down = True
    for _ in range(int(LOCK_LEASE_SECONDS / POLL_SECONDS) + 40):
        if replicas.upstreams[1].calls:
            break
        await replicas.tick()
    await replicas.upstreams[1].started(1)
    replicas.upstreams[1].succeed(0)
    replicas.upstreams[0].succeed(0)
    assert len((await replicas.drive(waiter)).response.outputs) == 2  # type: ignore[attr-defined]
    # The leader retries what others wait on for a while, then gives up: it is answered.
    assert len((await replicas.drive(leader)).response.outputs) == 2  # type: ignore[attr-defined]
    # The price of availability once nobody can tell whether the leader is alive.
    assert replicas.generations == 2


async def test_a_short_outage_during_the_wait_does_not_pay_twice() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=28)
    replicas.entries.down = replicas.shared.down = True
    for _ in range(int(LOCK_LEASE_SECONDS / 2 / POLL_SECONDS)):
        await replicas.tick()
    replicas.entries.down = replicas.shared.down = False
    replicas.upstreams[0].succeed(0)
    await replicas.drive(leader)
    assert (await replicas.drive(waiter)).cache_result == CacheResult.CACHE_RESULT_COALESCED  # type: ignore[attr-defined]
    assert replicas.generations == 1


async def test_an_unreadable_outcome_is_ignored() -> None:
    replicas = Replicas()
    key = cache_key(generation_call(seed=29).request, KEY.cache_scope)
    replicas.shared.outcomes[key] = b"{not json"
    task = asyncio.create_task(replicas.caches[1].generate(generation_call(seed=29)))
    await replicas.upstreams[1].started(1)
    replicas.upstreams[1].succeed(0)
    assert (await replicas.drive(task)).cache_result == CacheResult.CACHE_RESULT_MISS  # type: ignore[attr-defined]


async def test_a_failed_entry_write_is_published_as_the_outcome_not_paid_again() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=30)

    async def refused(key: str, value: bytes, ttl: float) -> None:
        raise BackendMisbehaved("OOM command not allowed")

    replicas.entries.put = refused  # type: ignore[method-assign]
    replicas.upstreams[0].succeed(0)
    a = await replicas.drive(leader)
    b = await replicas.drive(waiter)
    assert list(b.response.outputs) == list(a.response.outputs)  # type: ignore[attr-defined]
    assert b.cache_result == CacheResult.CACHE_RESULT_COALESCED  # type: ignore[attr-defined]
    assert replicas.generations == 1


async def test_an_unreadable_outcome_store_keeps_the_waiter_waiting() -> None:
    replicas = Replicas()
    leader, waiter = await replicas.leader_and_waiter(seed=31)
    replicas.upstreams[0].fail(0, UpstreamConnectionLost("lost; may have been charged"))
    with pytest.raises(UpstreamConnectionLost):
        await replicas.drive(leader)
    # The outcome is published, but reading it fails for a while: the waiter cannot tell
    # what happened, so it must not pay again; once it can read, it gets the error.
    reads = 0
    original = replicas.shared.get_outcome

    async def flaky(key: str) -> bytes | None:
        nonlocal reads
        reads += 1
        if reads <= 120:  # 6 s of polls: longer than a released lease is waited for
            raise BackendMisbehaved("LOADING")
        return await original(key)

    replicas.shared.get_outcome = flaky  # type: ignore[method-assign]
    with pytest.raises(UpstreamConnectionLost):
        await replicas.drive(waiter)
    assert reads > 120
    assert replicas.generations == 1


def test_outcomes_round_trip() -> None:
    from gateway.cache_coordinator import decode_outcome

    error = UpstreamConnectionLost("lost")
    decoded = decode_outcome(encode_outcome(error))
    assert isinstance(decoded, UpstreamConnectionLost) and decoded.reason == error.reason
    empty = answer(outputs=0).response
    assert decode_outcome(encode_outcome(empty)) == empty
    assert decode_outcome(b"[]") is None


def test_the_remembered_key_follows_new_catalog_defaults() -> None:
    from gateway.cache_key import CatalogDefaults

    current: list[CatalogDefaults | None] = [None]
    cache = CachingGenerator(
        ManualGenerator(),
        MemoryStore(max_entries=100, max_bytes=1 << 20, clock=FakeClock()),
        ttl=60,
        upstream_timeout=600,
        catalog_defaults=lambda: current[0],
    )
    call = generation_call(seed=5)
    scope = call.key.cache_scope
    assert cache._key(call) == cache._key(call) == cache_key(call.request, scope)
    for model, size in (("model-a", (512, 512)), ("model-b", (768, 768))):
        current[0] = CatalogDefaults(model, {model: size})
        expected = cache_key(call.request, scope, current[0])
        assert cache._key(call) == cache._key(call) == expected
    assert len({cache_key(call.request, scope, d) for d in (None, current[0])}) == 2
