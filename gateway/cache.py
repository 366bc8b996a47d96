"""The seeded-request cache: identical seeded generations are paid for once.

`CachingGenerator` wraps the upstream generator. For a cacheable call (explicit seed
>= 0) it serves a stored response (HIT), or joins an identical call already in flight
in this process (COALESCED) or, through gateway.cache_coordinator, in another gateway,
or makes the one upstream call (MISS) and stores its result. The upstream call runs in
a task of its own: a caller that cancels or runs out of deadline leaves it running for
the others, and it still fills the cache, so no credit is wasted on an abandoned half.
Waiters share the outcome, errors included: an identical call is never sent twice while
the first may still be charged. Only an error about the leader's caller (its budget,
`concerns_caller`) is not shared: each waiter then tries for itself.

With a shared backend, a bounded in-process first tier (gateway.cache_tier) is read
first and written with it, so hits and local coalescing go on through a backend outage.
The backend is never allowed to fail a call (gateway.cache_backend): when it fails a
lookup, a call nobody else is generating goes to the upstream as if uncached. The call's
cache result (response, `x-cache` trailer, access log and the cache-result metric alike)
then says what happened to the call, `miss`; the backend's failure is counted apart
(`CacheBackendFailed`). Unreadable entries are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from gateway import tracing
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import BalanceBook
from gateway.cache_backend import BackendFailure
from gateway.cache_coordinator import PUBLISH_WITHIN_SECONDS, CrossReplicaCoordinator, Filled
from gateway.cache_key import CatalogDefaults, cache_key, is_cacheable
from gateway.cache_store import EntryStore, MemoryStore
from gateway.cache_tier import LocalTier
from gateway.call import CallBudget, cache_result_name
from gateway.errors import CallTimedOut, DeadlineTooShort, GatewayError
from gateway.events import NULL_TELEMETRY, CacheBackendFailed, CacheDecided, Telemetry
from gateway.flights import Flights, wait_for
from gateway.generation import (
    MIN_GENERATION_SECONDS,
    Generated,
    GenerationCall,
    Generator,
    ensure_time_to_generate,
)
from gateway.tracing import TraceParent, Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

_log = logging.getLogger(__name__)
CacheResult = generation_pb2.CacheResult
_NAMES = {value: cache_result_name(value) for value in CacheResult.values()}
# The events are immutable: one per result, made once.
_DECIDED = {value: CacheDecided(name) for value, name in _NAMES.items()}
# The memo of cache keys (`CachingGenerator._key`): entries, and the largest request kept.
KEY_MEMO_ENTRIES = 1024
KEY_MEMO_MAX_BYTES = 2048
# The hits remembered for `CachingGenerator.replay_hit`; cleared when full.
REPLAY_MEMO_ENTRIES = 1024


class CachingGenerator:
    """Serves cacheable calls from the store or a shared flight; see the module docstring."""

    def __init__(
        self,
        inner: Generator,
        entries: EntryStore,
        *,
        ttl: float,
        upstream_timeout: float,
        coordinator: CrossReplicaCoordinator | None = None,
        local: LocalTier | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
        tracing: Tracing | None = None,
        min_generation_seconds: float = MIN_GENERATION_SECONDS,
        catalog_defaults: Callable[[], CatalogDefaults | None] = lambda: None,
    ) -> None:
        self._catalog_defaults = catalog_defaults
        self._min_generation_seconds = min_generation_seconds
        self._tracing = tracing or Tracing.off()
        self._inner = inner
        self._entries = entries
        self._ttl = ttl
        self._upstream_timeout = upstream_timeout
        self._coordinator = coordinator
        self._local = local
        self._write_back: asyncio.Task[int] | None = None
        self._telemetry = telemetry
        self._flights: Flights[Filled] = Flights("cache-fill")
        # The span of the call each flight was started for (waiters link to it).
        self._flight_traces: dict[str, SpanContext] = {}
        self._balances: BalanceBook[str] = BalanceBook()
        # (request bytes, scope) -> (the catalog defaults used, the key).
        self._keys: dict[tuple[bytes, str], tuple[CatalogDefaults | None, str]] = {}
        # For `replay_hit`: the store, when it is the only one and answers without I/O
        # (with a shared backend a hit also reads the shared balance); and key -> (the
        # stored bytes, the balance, the hit served from them).
        self._memory = (
            entries
            if isinstance(entries, MemoryStore) and coordinator is None and local is None
            else None
        )
        self._replays: dict[str, tuple[bytes, float | None, Generated]] = {}

    @property
    def flights(self) -> int:
        return len(self._flights)

    @property
    def waiting_on_other_gateways(self) -> int:
        """Flights of ours waiting for another gateway's identical generation."""
        return self._coordinator.waiting if self._coordinator is not None else 0

    async def generate(self, call: GenerationCall) -> Generated:
        if not is_cacheable(call.request):
            return await self._uncached(call, generation_pb2.CACHE_RESULT_UNCACHEABLE)
        if not call.cache_control.lookup:
            key = self._key(call) if call.cache_control.store else None
            return await self._uncached(call, generation_pb2.CACHE_RESULT_BYPASS, key)

        key = self._key(call)
        span = self._tracing.child(call.trace, "cache lookup")
        backend_failed = False
        try:
            hit = await self._lookup(key, call.key.cache_scope)
        except BackendFailure:
            hit, backend_failed = None, True
            self._telemetry.emit(CacheBackendFailed("lookup"))
        except BaseException:
            tracing.end(span, {})
            raise
        if hit is not None:
            self._decided(generation_pb2.CACHE_RESULT_HIT, span)
            return hit

        flight = self._flights.get(key)
        if flight is not None:
            self._decided(generation_pb2.CACHE_RESULT_COALESCED, span)
            tracing.link_to(call.trace, self._flight_traces.get(key))
            try:
                filled = await self._wait(flight, call.budget)
            except GatewayError as error:
                if not error.concerns_caller:
                    raise
                # The leader's own refusal (its budget), not this caller's: try again,
                # as the leader of a new flight or a waiter on another.
                return await self.generate(call)
            return filled.generated.served_as(generation_pb2.CACHE_RESULT_COALESCED)

        # A flight is not bound by the caller's deadline, so refuse here what the upstream
        # generator would refuse (a caller that can never receive the answer), before the
        # call is counted as a miss.
        try:
            ensure_time_to_generate(call, self._min_generation_seconds)
        except DeadlineTooShort:
            tracing.end(span, {})
            raise
        tracing.end(
            span,
            {"stablecog.cache_result": "miss", "stablecog.cache_backend_failed": backend_failed},
        )
        flight = self._flights.start(key, lambda: self._fill(key, call))
        if call.trace is not None:
            self._flight_traces[key] = call.trace.context
        flight.add_done_callback(lambda _: self._flight_traces.pop(key, None))
        # Counted once the flight tells: another gateway's generation makes it coalesced,
        # as the response says; a miss otherwise (an error or a cut call included).
        result = generation_pb2.CACHE_RESULT_MISS
        try:
            filled = await self._wait(flight, call.budget)
            if filled.from_other_replica:
                result = generation_pb2.CACHE_RESULT_COALESCED
                tracing.annotate(call.trace, {"stablecog.generated_by": filled.generated_by})
                tracing.link_to(call.trace, tracing.remote_context(filled.leader_trace))
        finally:
            self._telemetry.emit(_DECIDED[result])
        return filled.generated.served_as(result)

    @property
    def replays(self) -> bool:
        """Whether `replay_hit` can ever answer (only with the in-process store alone)."""
        return self._memory is not None

    @property
    def largest_replayed_request(self) -> int:
        """The largest request (in bytes) whose key is remembered, so whose hit can be
        replayed."""
        return KEY_MEMO_MAX_BYTES

    def replay_hit(self, request_bytes: bytes, scope: str) -> Generated | None:
        """The hit `generate` would serve right now to a call whose request has these
        deterministic bytes, for this account scope, found without awaiting anything, and
        not counted (the call runner counts a replayed call as a hit). None when that
        cannot be told so (the call then
        runs `generate`): a shared backend, a request whose key is not remembered or was
        derived from other catalog defaults, or no entry. The response is shared by every
        call it answers: never modify it."""
        memory = self._memory
        if memory is None:
            return None
        known = self._keys.get((request_bytes, scope))
        if known is None or known[0] is not self._catalog_defaults():
            return None
        key = known[1]
        stored = memory.lookup(key)
        if stored is None:  # expired or evicted: its answer is not kept past the entry
            self._replays.pop(key, None)
            return None
        balance = self._balances.get(scope)
        credits = balance.credits if balance is not None else None
        replay = self._replays.get(key)
        if replay is None or replay[0] is not stored or replay[1] != credits:
            response = _stored_response(stored)
            if response is None:
                return None
            if balance is not None:
                response.remaining_credits = balance.credits
            if len(self._replays) >= REPLAY_MEMO_ENTRIES:
                self._replays.clear()
            replay = (stored, credits, Generated(response, generation_pb2.CACHE_RESULT_HIT))
            self._replays[key] = replay
        return replay[2]

    def _key(self, call: GenerationCall) -> str:
        """The call's cache key, remembered by the request's exact bytes and the account
        scope for the catalog defaults it was derived with (hits repeat a request: the
        canonical form, its JSON and digest were ~6% of a hit's samples). Bounded."""
        defaults = self._catalog_defaults()
        raw = call.request.SerializeToString(deterministic=True)
        if len(raw) > KEY_MEMO_MAX_BYTES:
            return cache_key(call.request, call.key.cache_scope, defaults)
        memo = (raw, call.key.cache_scope)
        known = self._keys.get(memo)
        if known is not None and known[0] is defaults:
            return known[1]
        key = cache_key(call.request, call.key.cache_scope, defaults)
        if len(self._keys) >= KEY_MEMO_ENTRIES:
            self._keys.clear()
        self._keys[memo] = (defaults, key)
        return key

    def _decided(
        self, result: generation_pb2.CacheResult.ValueType, span: TraceParent | None = None
    ) -> None:
        self._telemetry.emit(_DECIDED[result])
        tracing.end(span, {"stablecog.cache_result": _NAMES[result]})

    async def wait_idle(self) -> None:
        """Return when no flight is running (each ends by its own upstream timeout)."""
        await self._flights.wait_idle()

    async def _uncached(
        self,
        call: GenerationCall,
        result: generation_pb2.CacheResult.ValueType,
        key: str | None = None,
    ) -> Generated:
        ensure_time_to_generate(call, self._min_generation_seconds)  # before it is counted
        self._decided(result)
        generated = await self._inner.generate(call)
        await self._remember(call.key.cache_scope, generated, key)
        return generated.served_as(result)

    async def _lookup(self, key: str, scope: str) -> Generated | None:
        """The stored entry for `key` as a hit (the first tier's, else the backend's), or
        None; BackendFailure if the backend's read failed."""
        self._start_write_back()
        stored = await self._local.get(key) if self._local is not None else None
        from_backend = stored is None
        if stored is None:
            stored = await self._entries.get(key)
        if stored is None:
            return None
        response = _stored_response(stored)
        if response is None:
            return None
        if from_backend and self._local is not None:
            await self._local.keep(key, stored, self._ttl)
        balance = self._balances.get(scope)
        if self._coordinator is not None:
            shared = await self._coordinator.balance(scope)
            if shared is not None and shared.supersedes(balance):
                balance = shared
        if balance is not None:
            response.remaining_credits = balance.credits
        return Generated(response=response, cache_result=generation_pb2.CACHE_RESULT_HIT)

    async def _wait(self, flight: asyncio.Task[Filled], budget: CallBudget) -> Filled:
        """Wait for a flight without letting this caller's cancellation cancel it."""
        return await wait_for(flight, budget, _still_generating)

    async def _fill(self, key: str, call: GenerationCall) -> Filled:
        """The one upstream call for `key`, coordinated with other gateways when shared."""
        # Not bound by the first caller's deadline: the others may wait longer.
        shared_call = call.with_budget(CallBudget(self._upstream_timeout, caller_deadline=False))
        scope = call.key.cache_scope

        async def generate() -> Generated:
            return await self._inner.generate(shared_call)

        async def store_for_waiters(generated: Generated) -> bool:
            return await self._remember(scope, generated, key, for_waiters=True)

        async def store(generated: Generated) -> bool:
            return await self._remember(scope, generated, key)

        if self._coordinator is None:
            generated = await generate()
            await store(generated)
            return Filled(generated, from_other_replica=False)
        return await self._coordinator.fill(
            key,
            lookup=lambda: self._lookup(key, scope),
            generate=generate,
            store=store_for_waiters,
            store_best_effort=store,
            trace=call.trace,
        )

    async def _remember(
        self, scope: str, generated: Generated, key: str | None, *, for_waiters: bool = False
    ) -> bool:
        """Store a successful response that has outputs (first: others may wait on it), and
        keep the newest balance. True when the entry was stored."""
        stored = False
        if key is not None and len(generated.response.outputs) > 0:
            value = generated.response.SerializeToString(deterministic=True)
            if self._local is not None:
                await self._local.keep(key, value, self._ttl)
            if for_waiters and self._coordinator is not None:
                stored = await self._coordinator.put_entry(key, value, self._ttl)
            else:
                with contextlib.suppress(BackendFailure):
                    await self._entries.put(key, value, self._ttl)
                    stored = True
            if not stored:
                self._telemetry.emit(CacheBackendFailed("store"))
                if self._local is not None:
                    self._local.not_stored(key, self._ttl)
        if generated.balance is not None:
            self._balances.offer(scope, generated.balance)
            if self._coordinator is not None:
                await self._coordinator.offer_balance(scope, generated.balance)
        return stored

    def _start_write_back(self) -> None:
        """Write back, in a task of its own, what the backend failed to store (at most
        one attempt a second, while the backend is down)."""
        if self._local is None or not self._local.write_back_due:
            return
        if self._write_back is not None and not self._write_back.done():
            return
        self._write_back = asyncio.create_task(
            self._local.write_back(self._entries.put), name="cache write-back"
        )

    async def aclose(self) -> None:
        if self._write_back is not None:
            self._write_back.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._write_back
        # Let the cut flights publish that they were abandoned and release their locks.
        await self._flights.aclose(within=PUBLISH_WITHIN_SECONDS * 2)
        await self._entries.aclose()


def _stored_response(stored: bytes) -> generation_pb2.GenerationResponse | None:
    """A stored entry's response, or None (logged) for one we never stored: garbage."""
    try:
        response = generation_pb2.GenerationResponse.FromString(stored)
    except DecodeError:
        response = None
    if response is None or len(response.outputs) == 0:
        _log.warning("ignoring an unreadable cache entry")
        return None
    return response


def _still_generating() -> CallTimedOut:
    return CallTimedOut(
        "the call's deadline ran out before Stablecog answered; the generation "
        "continues and will be served from the cache"
    )
