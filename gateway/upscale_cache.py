"""The upscale cache: an upscale of a generation output is paid for once per account and
model, even when identical calls arrive together.

An output's picture never changes, so the same upscale of it gives the same picture: it is
served from the store (HIT), or joins an identical upscale already in flight in this
process (COALESCED), or makes the one upstream call (MISS) in a flight of its own
(gateway.flights): not bound by the first caller's deadline, it outlives a caller that
leaves, still fills the store, and its outcome, errors included, is every waiter's. Only
an error about the leader's caller (its budget, `concerns_caller`) is not shared: each
waiter then tries for itself. An upscale of an image URL is not cached (UNCACHEABLE): the
bytes behind a URL can change. The store is this process's memory (gateway.app).
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import BalanceBook
from gateway.cache_store import EntryStore
from gateway.call import CallBudget, cache_result_name
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import CallTimedOut, GatewayError
from gateway.events import NULL_TELEMETRY, CacheDecided, Telemetry
from gateway.flights import Flights, wait_for
from gateway.generation import MIN_GENERATION_SECONDS
from gateway.media import upscale_cache_key
from gateway.upscale import UpscaleCall, Upscaled, Upscaler, ensure_time_to_upscale

_log = logging.getLogger(__name__)
# How long shutdown lets cut flights end.
CLOSE_SECONDS = 2.0


class CachingUpscaler:
    """Serves cacheable upscales from the store or a shared flight; see the module doc.
    Without a store (--cache off) every upscale goes upstream, UNCACHEABLE."""

    def __init__(
        self,
        inner: Upscaler,
        entries: EntryStore | None,
        *,
        ttl: float,
        upstream_timeout: float,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        min_upscale_seconds: float = MIN_GENERATION_SECONDS,
    ) -> None:
        self._inner = inner
        self._entries = entries
        self._ttl = ttl
        self._upstream_timeout = upstream_timeout
        self._telemetry = telemetry
        self._clock = clock
        self._min_upscale_seconds = min_upscale_seconds
        self._flights: Flights[Upscaled] = Flights("upscale-fill")
        self._balances: BalanceBook[str] = BalanceBook()

    @property
    def flights(self) -> int:
        return len(self._flights)

    async def upscale(self, call: UpscaleCall) -> Upscaled:
        key = (
            upscale_cache_key(call.request, call.key.cache_scope)
            if self._entries is not None
            else None
        )
        if key is None:
            return await self._uncached(call, generation_pb2.CACHE_RESULT_UNCACHEABLE, None)
        if not call.cache_control.lookup:
            stored_as = key if call.cache_control.store else None
            return await self._uncached(call, generation_pb2.CACHE_RESULT_BYPASS, stored_as)
        hit = await self._lookup(key, call.key.cache_scope)
        if hit is not None:
            self._decided(generation_pb2.CACHE_RESULT_HIT)
            return hit
        flight = self._flights.get(key)
        if flight is not None:
            self._decided(generation_pb2.CACHE_RESULT_COALESCED)
            try:
                upscaled = await wait_for(flight, call.budget, _timed_out)
            except GatewayError as error:
                if not error.concerns_caller:
                    raise
                # The leader's own refusal (its budget), not this caller's: try again.
                return await self.upscale(call)
            return upscaled.served_as(generation_pb2.CACHE_RESULT_COALESCED)
        # A flight is not bound by the caller's deadline: refuse here a caller that could
        # never receive the answer, before it is counted as a miss.
        ensure_time_to_upscale(call.budget, self._min_upscale_seconds)
        self._decided(generation_pb2.CACHE_RESULT_MISS)
        flight = self._flights.start(key, lambda: self._fill(key, call))
        upscaled = await wait_for(flight, call.budget, _timed_out)
        return upscaled.served_as(generation_pb2.CACHE_RESULT_MISS)

    async def _uncached(
        self, call: UpscaleCall, result: generation_pb2.CacheResult.ValueType, key: str | None
    ) -> Upscaled:
        ensure_time_to_upscale(call.budget, self._min_upscale_seconds)  # before it is counted
        self._decided(result)
        upscaled = await self._inner.upscale(call)
        await self._remember(call.key.cache_scope, upscaled, key)
        return upscaled.served_as(result)

    async def _fill(self, key: str, call: UpscaleCall) -> Upscaled:
        """The one upstream call for `key`, not bound by the first caller's deadline."""
        shared = call.with_budget(CallBudget(self._upstream_timeout, caller_deadline=False))
        upscaled = await self._inner.upscale(shared)
        await self._remember(call.key.cache_scope, upscaled, key)
        return upscaled

    async def _remember(self, scope: str, upscaled: Upscaled, key: str | None) -> None:
        if key is not None and self._entries is not None and upscaled.response.outputs:
            value = upscaled.response.SerializeToString(deterministic=True)
            await self._entries.put(key, value, self._ttl)
        if upscaled.balance is not None:
            self._balances.offer(scope, upscaled.balance)

    async def _lookup(self, key: str, scope: str) -> Upscaled | None:
        assert self._entries is not None
        stored = await self._entries.get(key)
        if stored is None:
            return None
        try:
            response = generation_pb2.CreateUpscaleResponse.FromString(stored)
        except DecodeError:
            response = None
        if response is None or not response.outputs:  # never stored by us: garbage
            _log.warning("ignoring an unreadable upscale cache entry")
            return None
        balance = self._balances.get(scope)
        if balance is not None:
            response.remaining_credits = balance.credits
        return Upscaled(response=response, cache_result=generation_pb2.CACHE_RESULT_HIT)

    def _decided(self, result: generation_pb2.CacheResult.ValueType) -> None:
        self._telemetry.emit(CacheDecided(cache_result_name(result)))

    async def wait_idle(self) -> None:
        """Return when no flight is running (each ends by its own upstream timeout)."""
        await self._flights.wait_idle()

    async def aclose(self) -> None:
        await self._flights.aclose(CLOSE_SECONDS)


def _timed_out() -> CallTimedOut:
    return CallTimedOut(
        "the call's deadline ran out before Stablecog answered; the upscale continues and "
        "will be served from the cache"
    )
