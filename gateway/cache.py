"""The seeded-request cache: identical seeded generations are paid for once.

`CachingGenerator` wraps the upstream generator. For a cacheable call (explicit seed
>= 0) it serves a stored response (HIT), or joins an identical call already in flight
in this process or, through Redis, in another gateway (COALESCED), or makes the one
upstream call (MISS) and stores its result. The upstream call runs in a task of its
own: a caller that cancels or runs out of deadline leaves it running for the others,
and it still fills the cache, so no credit is wasted on an abandoned half.

The backend is never allowed to fail a call: when it errors or is slow (bounded by
the store's timeout), the call goes to the upstream as if uncached, the failure is
counted, logged once per outage, and the backend is tried again a second later.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.cache_key import account_scope, cache_key, is_cacheable
from gateway.cache_store import CacheStore
from gateway.calls import NullTelemetry, Telemetry
from gateway.errors import CallTimedOut
from gateway.generation import Generated, GenerationCall, Generator
from gateway.upstream import CallBudget

_log = logging.getLogger(__name__)
CacheResult = generation_pb2.CacheResult
T = TypeVar("T")

LOCK_LEASE_SECONDS = 10.0
POLL_SECONDS = 0.05
RETRY_BACKEND_AFTER = 1.0


class FailOpen:
    """Runs backend operations so that a failure becomes 'no answer', never an error."""

    def __init__(
        self, telemetry: Telemetry, *, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._telemetry = telemetry
        self._timeout = timeout
        self._clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None and self._clock() < self._retry_at

    async def run(self, operation: Awaitable[T], default: T) -> T:
        if self.down:
            _close(operation)
            return default
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation
        except Exception as exc:  # any backend failure: serve without the cache
            self._telemetry.cache_result("error")
            if self._down_since is None:
                self._down_since = self._clock()
                _log.warning(
                    "cache backend unavailable; serving from the upstream without it",
                    extra={"error": type(exc).__name__},
                )
            self._retry_at = self._clock() + RETRY_BACKEND_AFTER
            return default
        if self._down_since is not None:
            _log.info(
                "cache backend is back",
                extra={"outage_seconds": round(self._clock() - self._down_since, 3)},
            )
            self._down_since = None
        return result


def _close(operation: Awaitable[object]) -> None:
    close = getattr(operation, "close", None)
    if close is not None:
        close()


@dataclass(frozen=True)
class _Filled:
    generated: Generated
    # True when another gateway process made the upstream call and this one read its result.
    from_other_process: bool


class CachingGenerator:
    """Serves cacheable calls from the store or a shared flight; see the module docstring."""

    def __init__(
        self,
        inner: Generator,
        store: CacheStore,
        *,
        upstream_url: str,
        ttl: float,
        upstream_timeout: float,
        backend_timeout: float,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._store = store
        self._upstream_url = upstream_url
        self._ttl = ttl
        self._upstream_timeout = upstream_timeout
        self._telemetry = telemetry or NullTelemetry()
        self._backend = FailOpen(self._telemetry, timeout=backend_timeout, clock=clock)
        self._flights: dict[str, asyncio.Task[_Filled]] = {}
        self._balances: dict[str, float] = {}

    @property
    def flights(self) -> int:
        return len(self._flights)

    async def generate(self, call: GenerationCall) -> Generated:
        scope = account_scope(call.key.value, self._upstream_url)
        if not is_cacheable(call.request):
            return await self._uncached(call, scope, CacheResult.CACHE_RESULT_UNCACHEABLE)
        if not call.cache_control.lookup:
            key = cache_key(call.request, scope) if call.cache_control.store else None
            return await self._uncached(call, scope, CacheResult.CACHE_RESULT_BYPASS, key)

        key = cache_key(call.request, scope)
        stored = await self._backend.run(self._store.get(key), None)
        if stored is not None:
            hit = await self._hit(stored, scope)
            if hit is not None:
                self._telemetry.cache_result("hit")
                return hit

        flight = self._flights.get(key)
        if flight is not None:
            self._telemetry.cache_result("coalesced")
            filled = await self._wait(flight, call.budget)
            return _as(filled.generated, CacheResult.CACHE_RESULT_COALESCED)

        self._telemetry.cache_result("miss")
        flight = asyncio.create_task(self._fill(key, call, scope), name=f"cache-fill {key[-12:]}")
        self._flights[key] = flight
        flight.add_done_callback(lambda done: self._landed(key, done))
        filled = await self._wait(flight, call.budget)
        if filled.from_other_process:
            return _as(filled.generated, CacheResult.CACHE_RESULT_COALESCED)
        return _as(filled.generated, CacheResult.CACHE_RESULT_MISS)

    def _landed(self, key: str, flight: asyncio.Task[_Filled]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved here too, for when every waiter has gone

    async def _uncached(
        self,
        call: GenerationCall,
        scope: str,
        result: generation_pb2.CacheResult.ValueType,
        key: str | None = None,
    ) -> Generated:
        self._telemetry.cache_result(
            "uncacheable" if result == CacheResult.CACHE_RESULT_UNCACHEABLE else "bypass"
        )
        generated = await self._inner.generate(call)
        await self._remember(scope, generated, key)
        return _as(generated, result)

    async def _hit(self, stored: bytes, scope: str) -> Generated | None:
        try:
            response = generation_pb2.GenerationResponse.FromString(stored)
        except DecodeError:
            _log.warning("ignoring an undecodable cache entry")
            return None
        balance = self._balances.get(scope)
        if self._store.shared:
            balance = await self._backend.run(self._store.get_balance(scope), balance)
        if balance is not None:
            response.remaining_credits = balance
        return Generated(response=response, cache_result=CacheResult.CACHE_RESULT_HIT)

    async def _wait(self, flight: asyncio.Task[_Filled], budget: CallBudget) -> _Filled:
        """Wait for a flight without letting this caller's cancellation cancel it."""
        if not budget.caller_deadline:
            return await asyncio.shield(flight)
        try:
            async with asyncio.timeout(budget.seconds):
                return await asyncio.shield(flight)
        except TimeoutError:
            raise CallTimedOut(
                "the call's deadline ran out before Stablecog answered; the generation "
                "continues and will be served from the cache",
                reason="DEADLINE_EXCEEDED",
            ) from None

    async def _fill(self, key: str, call: GenerationCall, scope: str) -> _Filled:
        """The one upstream call for `key`, coordinated with other processes when shared."""
        # Not bound by the first caller's deadline: the others may wait longer.
        shared_call = GenerationCall(
            request=call.request,
            key=call.key,
            budget=CallBudget(self._upstream_timeout, caller_deadline=False),
            cache_control=call.cache_control,
        )
        if not self._store.shared:
            return _Filled(await self._generate_and_store(shared_call, scope, key), False)

        token = secrets.token_hex(8)
        deadline = time.monotonic() + self._upstream_timeout
        while True:
            if await self._backend.run(self._store.try_lock(key, token, LOCK_LEASE_SECONDS), True):
                try:
                    stored = await self._backend.run(self._store.get(key), None)
                    hit = await self._hit(stored, scope) if stored is not None else None
                    if hit is not None:  # filled between our lookup and our lock
                        return _Filled(hit, True)
                    return _Filled(await self._leased(shared_call, scope, key, token), False)
                finally:
                    await self._backend.run(self._store.unlock(key, token), None)
            # Another gateway holds the lock: wait for its result or for the lock to go.
            while time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
                stored = await self._backend.run(self._store.get(key), None)
                hit = await self._hit(stored, scope) if stored is not None else None
                if hit is not None:
                    return _Filled(hit, True)
                if self._backend.down or not await self._backend.run(
                    self._store.locked(key), False
                ):
                    break
            else:
                raise CallTimedOut(
                    "another gateway's identical generation did not finish in time",
                    reason="UPSTREAM_TIMEOUT",
                )

    async def _leased(self, call: GenerationCall, scope: str, key: str, token: str) -> Generated:
        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(LOCK_LEASE_SECONDS / 3)
                await self._backend.run(
                    self._store.refresh_lock(key, token, LOCK_LEASE_SECONDS), None
                )

        keeper = asyncio.create_task(keep_lease())
        try:
            return await self._generate_and_store(call, scope, key)
        finally:
            keeper.cancel()

    async def _generate_and_store(self, call: GenerationCall, scope: str, key: str) -> Generated:
        generated = await self._inner.generate(call)
        await self._remember(scope, generated, key)
        return generated

    async def _remember(self, scope: str, generated: Generated, key: str | None) -> None:
        """Keep the newest balance; store a successful response that has outputs."""
        balance = generated.response.remaining_credits
        self._balances[scope] = balance
        if self._store.shared:
            await self._backend.run(self._store.put_balance(scope, balance), None)
        if key is not None and len(generated.response.outputs) > 0:
            value = generated.response.SerializeToString(deterministic=True)
            await self._backend.run(self._store.put(key, value, self._ttl), None)

    async def aclose(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        await self._store.aclose()


def _as(generated: Generated, result: generation_pb2.CacheResult.ValueType) -> Generated:
    return Generated(
        response=generated.response,
        cache_result=result,
        upstream_seconds=generated.upstream_seconds
        if result != CacheResult.CACHE_RESULT_COALESCED
        else None,
    )
