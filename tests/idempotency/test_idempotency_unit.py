"""The idempotency protocol on its own: a FakeClock, an upstream generator the test answers
by hand, the in-memory store, and (for the lease) the Redis store on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.cache_backend import BackendGuard, BackendMisbehaved, BackendUnavailable
from gateway.cache_coordinator import encode_outcome
from gateway.errors import (
    GatewayError,
    GenerationAbandoned,
    IdempotencyKeyReused,
    UpstreamBusy,
    UpstreamConnectionLost,
)
from gateway.events import IdempotentReplayed
from gateway.generation import GenerationCall
from gateway.idempotency import (
    LEASE_SECONDS,
    MISSING_SECONDS,
    IdempotentGenerator,
    MemoryIdempotencyStore,
    Record,
    record_id,
    request_fingerprint,
)
from gateway.idempotency_redis import RedisIdempotencyStore
from gateway.idempotency_redis import _keys as redis_keys
from tests.cache.cache_fakes import KEY, ManualGenerator, Recorder, answer, generation_call, until
from tests.conftest import FakeClock
from tests.fixtures import eventually
from tests.services import RedisServer

REPLAYED = generation_pb2.CacheResult.CACHE_RESULT_REPLAYED
WINDOW = 3600.0


def keyed(key: str = "key-1", **fields: object) -> GenerationCall:
    return replace(generation_call(seed=None, **fields), idempotency_key=key)  # type: ignore[arg-type]


def generator(
    inner: ManualGenerator, clock: FakeClock, store: object | None = None, **kw: object
) -> tuple[IdempotentGenerator, Recorder]:
    telemetry = Recorder()
    made = IdempotentGenerator(
        inner,
        MemoryIdempotencyStore(max_records=100, clock=clock) if store is None else store,  # type: ignore[arg-type]
        window=WINDOW,
        upstream_timeout=600.0,
        clock=clock,
        telemetry=telemetry,
        min_generation_seconds=0.0,
        **kw,  # type: ignore[arg-type]
    )
    return made, telemetry


def test_record_ids_name_neither_key() -> None:
    record = record_id(KEY.cache_scope, "my-key")
    assert "my-key" not in record and KEY.value not in record
    assert record != record_id(KEY.cache_scope, "my-key2")
    assert len(record) == 64


def test_fingerprints_tell_an_omitted_seed_from_seed_zero() -> None:
    # The cache key treats these alike (both seed 0 in its canonical form); a repeat must not.
    unseeded = generation_pb2.GenerationRequest(prompt="p")
    zero = generation_pb2.GenerationRequest(prompt="p", seed=0)
    assert request_fingerprint(unseeded) != request_fingerprint(zero)


async def test_a_call_without_a_key_passes_through() -> None:
    clock, inner = FakeClock(), ManualGenerator()
    gen, telemetry = generator(inner, clock)
    calls = [asyncio.ensure_future(gen.generate(generation_call(seed=None))) for _ in range(2)]
    await inner.started(2)
    inner.succeed(0)
    inner.succeed(1)
    await asyncio.gather(*calls)
    assert telemetry.of(IdempotentReplayed) == []


async def test_a_cancelled_first_caller_does_not_cut_the_generation() -> None:
    clock, inner = FakeClock(), ManualGenerator()
    gen, telemetry = generator(inner, clock)
    first = asyncio.ensure_future(gen.generate(keyed()))
    await inner.started(1)
    repeat = asyncio.ensure_future(gen.generate(keyed()))
    await until(lambda: gen.flights == 1 and not repeat.done())
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    inner.succeed(0)
    replayed = await repeat
    assert replayed.cache_result == REPLAYED and len(replayed.response.outputs) == 2
    assert len(inner.calls) == 1
    # The generation was made with the full upstream timeout, not the first caller's.
    assert inner.calls[0].budget.caller_deadline is False
    assert telemetry.of(IdempotentReplayed) == [IdempotentReplayed("svc", "ok")]


async def test_a_repeat_with_another_request_is_refused_while_the_first_runs() -> None:
    clock, inner = FakeClock(), ManualGenerator()
    gen, _ = generator(inner, clock)
    first = asyncio.ensure_future(gen.generate(keyed()))
    await inner.started(1)
    with pytest.raises(IdempotencyKeyReused):
        await gen.generate(keyed(num_outputs=1))
    inner.succeed(0)
    await first
    assert len(inner.calls) == 1


async def test_nothing_charged_releases_the_key_and_charged_replays_it() -> None:
    clock, inner = FakeClock(), ManualGenerator()
    gen, _ = generator(inner, clock)
    busy = asyncio.ensure_future(gen.generate(keyed("a")))
    await inner.started(1)
    inner.fail(0, UpstreamBusy("429", retry_after=1.0))
    with pytest.raises(UpstreamBusy):
        await busy
    again = asyncio.ensure_future(gen.generate(keyed("a")))
    await inner.started(2)  # released: the repeat runs
    inner.fail(1, UpstreamConnectionLost("lost after sending"))
    with pytest.raises(UpstreamConnectionLost) as first:
        await again
    assert "idempotent_replay" not in first.value.metadata
    with pytest.raises(UpstreamConnectionLost) as replayed:
        await gen.generate(keyed("a"))
    assert replayed.value.metadata == {"idempotent_replay": "true"}
    assert replayed.value.message == "lost after sending"
    assert len(inner.calls) == 2


async def test_the_window_and_the_memory_bound() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_records=2, clock=clock)
    assert await store.claim("running", "fp", "t0", lease=1, window=WINDOW) is None
    for name in ("done-1", "done-2"):
        assert await store.claim(name, "fp", "t", lease=1, window=WINDOW) is None
        await store.finish(name, "fp", "t", b"{}", window=WINDOW)
    # Over the bound: the oldest finished record went, never the running one.
    assert len(store) == 2
    assert await store.read("done-1") is None
    assert await store.read("running") == Record("fp")
    assert await store.read("done-2") == Record("fp", b"{}")
    clock.advance(WINDOW)
    assert await store.read("done-2") is None


async def test_an_outcome_that_cannot_be_stored_still_answers_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unwritable(MemoryIdempotencyStore):
        async def finish(self, *args: object, **kw: object) -> None:
            raise BackendUnavailable("ConnectionError")

    caplog.set_level(logging.WARNING)
    clock, inner = FakeClock(), ManualGenerator()
    guard = BackendGuard(timeout=1.0, clock=clock)
    gen, _ = generator(inner, clock, Unwritable(max_records=10, clock=clock), guard=guard)
    made = asyncio.ensure_future(gen.generate(keyed()))
    await inner.started(1)
    inner.succeed(0)
    while not made.done():  # the write is retried for 2 s of the fake clock
        clock.advance(0.1)
        await asyncio.sleep(0)
    assert len((await made).response.outputs) == 2
    assert any("could not be stored" in r.getMessage() for r in caplog.records), caplog.records


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_store(redis_client: aioredis.Redis) -> RedisIdempotencyStore:
    return RedisIdempotencyStore(redis_client)


async def test_redis_records_claim_once_and_finish_by_their_holder_only(
    redis_store: RedisIdempotencyStore,
) -> None:
    assert await redis_store.claim("r1", "fp", "mine", lease=5, window=WINDOW) is None
    assert await redis_store.claim("r1", "fp", "theirs", lease=5, window=WINDOW) == Record("fp")
    await redis_store.finish("r1", "fp", "theirs", b"x", window=WINDOW)  # not the holder
    await redis_store.release("r1", "theirs")
    assert await redis_store.read("r1") == Record("fp")
    await redis_store.finish("r1", "fp", "mine", b'{"a": 1}', window=WINDOW)
    assert await redis_store.read("r1") == Record("fp", b'{"a": 1}')
    assert await redis_store.claim("r2", "fp", "mine", lease=5, window=WINDOW) is None
    await redis_store.release("r2", "mine")
    assert await redis_store.read("r2") == Record("", released=True)
    assert await redis_store.claim("r2", "fp2", "next", lease=5, window=WINDOW) is None


async def test_a_record_whose_holder_vanished_is_answered_abandoned(
    redis_store: RedisIdempotencyStore, redis_client: aioredis.Redis
) -> None:
    call = keyed("held")
    record = record_id(KEY.cache_scope, "held")
    fingerprint = request_fingerprint(call.request)
    # Another gateway claimed it, then stopped mid-call: its lease ran out.
    assert await redis_store.claim(record, fingerprint, "gone", lease=60, window=WINDOW) is None
    record_key, lease_key = redis_keys(record)
    assert await redis_client.delete(lease_key) == 1
    assert await redis_client.pttl(record_key) > (WINDOW - 60) * 1000  # the window, not the lease
    assert (await redis_store.read(record)) == Record(fingerprint, orphaned=True)
    clock, inner = FakeClock(), ManualGenerator()
    gen, _ = generator(inner, clock, redis_store)
    with pytest.raises(GenerationAbandoned) as abandoned:
        await gen.generate(call)
    assert abandoned.value.metadata == {"idempotent_replay": "true"}
    assert inner.calls == []


async def test_a_repeat_polls_a_record_held_elsewhere_until_it_is_finished(
    redis_store: RedisIdempotencyStore,
) -> None:
    call = keyed("elsewhere")
    record = record_id(KEY.cache_scope, "elsewhere")
    fingerprint = request_fingerprint(call.request)
    assert (
        await redis_store.claim(record, fingerprint, "other", lease=LEASE_SECONDS, window=WINDOW)
        is None
    )
    clock, inner = FakeClock(), ManualGenerator()
    gen, _ = generator(inner, clock, redis_store)
    repeat = asyncio.ensure_future(gen.generate(call))
    await eventually(lambda: clock.sleepers == 1)
    clock.advance(1.0)  # still running elsewhere: it keeps polling
    await eventually(lambda: clock.sleepers == 1)
    outcome = answer().response
    await redis_store.finish(record, fingerprint, "other", encode_outcome(outcome), window=WINDOW)
    while not repeat.done():
        clock.advance(0.1)
        await asyncio.sleep(0.01)
    assert (await repeat).response.outputs == outcome.outputs
    assert inner.calls == []


def test_every_replayed_error_keeps_its_class() -> None:
    # Replays rebuild the error from its stored form: the class decides the code.
    from gateway.idempotency import _copy

    error: GatewayError = UpstreamConnectionLost("m", metadata={"a": "b"})
    again = _copy(error, {"idempotent_replay": "true"})
    assert type(again) is UpstreamConnectionLost
    assert again.metadata == {"a": "b", "idempotent_replay": "true"}


async def test_a_record_lost_by_the_store_and_never_put_back_is_answered_abandoned(
    redis_store: RedisIdempotencyStore, redis_client: aioredis.Redis
) -> None:
    call = keyed("lost")
    record = record_id(KEY.cache_scope, "lost")
    fingerprint = request_fingerprint(call.request)
    assert await redis_store.claim(record, fingerprint, "other", lease=60, window=WINDOW) is None
    clock, inner = FakeClock(), ManualGenerator()
    gen, _ = generator(inner, clock, redis_store)
    repeat = asyncio.ensure_future(gen.generate(call))
    await eventually(lambda: gen.waiting == 1 and clock.sleepers == 1)
    await redis_client.flushall()  # lost, not released; its holder never puts it back
    for _ in range(100):  # 50 s of the fake clock at most
        if repeat.done():
            break
        clock.advance(0.5)
        await asyncio.sleep(0.01)
    assert inner.calls == []  # never claimed and sent again
    with pytest.raises(GenerationAbandoned):
        await repeat
    assert clock.monotonic() >= MISSING_SECONDS


async def test_a_claim_released_before_it_lands_never_takes_the_record(
    redis_store: RedisIdempotencyStore,
) -> None:
    # The caller gave up on a claim that timed out, and voided it; the claim lands after.
    await redis_store.release("r3", "late")
    with pytest.raises(BackendMisbehaved):
        await redis_store.claim("r3", "fp", "late", lease=5, window=WINDOW)
    assert await redis_store.read("r3") is None
    assert await redis_store.claim("r3", "fp", "next", lease=5, window=WINDOW) is None


async def test_the_memory_store_is_bounded_in_bytes_too() -> None:
    # Any caller can send a new key per call; 100,000 records of a 4-output response
    # (about 1.2 kB encoded each) would not fit a gateway pod's memory limit.
    clock = FakeClock()
    store = MemoryIdempotencyStore(max_records=1000, max_bytes=10_000, clock=clock)
    assert await store.claim("running", "fp", "t0", lease=1, window=WINDOW) is None
    for n in range(50):
        name = f"done-{n}"
        assert await store.claim(name, "fp", "t", lease=1, window=WINDOW) is None
        await store.finish(name, "fp", "t", b"x" * 1000, window=WINDOW)
    assert store.bytes <= 10_000
    assert await store.read("running") == Record("fp")  # never forgotten while running
    assert await store.read("done-49") == Record("fp", b"x" * 1000)  # the newest kept
    assert await store.read("done-0") is None
