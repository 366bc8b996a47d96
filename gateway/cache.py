"""The seeded-request cache: identical seeded generations are paid for once.

`CachingGenerator` wraps the upstream generator. For a cacheable call (explicit seed
>= 0) it serves a stored response (HIT), or joins an identical call already in flight
in this process or, through Redis, in another gateway (COALESCED), or makes the one
upstream call (MISS) and stores its result. The upstream call runs in a task of its
own: a caller that cancels or runs out of deadline leaves it running for the others,
and it still fills the cache, so no credit is wasted on an abandoned half. Waiters
share the outcome, errors included: an identical call is never sent twice while the
first may still be charged.

Across gateways (Redis), the one holding a lease lock makes the call and publishes how
it ended: the entry, or an outcome record (its error, an answer with no outputs, or
"abandoned" when it was stopped mid-call). Those writes are retried past a short
outage; the lease is refreshed (and re-created if Redis lost it); waiters wait through
short outages rather than paying for the same generation themselves.

The backend is never allowed to fail a call: when it is unreachable or slow (bounded
by the store's timeout), a call nobody else is generating goes to the upstream as if
uncached; the failure is counted once per call, logged once per outage, and the
backend is tried again a second later. Unreadable content in Redis is ignored.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.cache_key import account_scope, cache_key, is_cacheable
from gateway.cache_store import CacheStore
from gateway.calls import NullTelemetry, Telemetry
from gateway.errors import (
    CallTimedOut,
    GatewayError,
    UpstreamInternal,
    error_from_dict,
    error_to_dict,
)
from gateway.generation import Generated, GenerationCall, Generator
from gateway.upstream import CallBudget

_log = logging.getLogger(__name__)
CacheResult = generation_pb2.CacheResult
T = TypeVar("T")
D = TypeVar("D")

LOCK_LEASE_SECONDS = 10.0
POLL_SECONDS = 0.05
RETRY_BACKEND_AFTER = 1.0
OUTCOME_TTL_SECONDS = 60.0
# How long the leader keeps retrying the writes other gateways wait on.
PUBLISH_WITHIN_SECONDS = 2.0
OUTAGE_ERRORS = (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError)


class _Unknown:
    """The backend did not answer."""


UNKNOWN = _Unknown()


class _RedisLost:
    """Redis stayed unreachable for longer than a lease while we waited."""


_REDIS_LOST = _RedisLost()


@dataclass
class _CallState:
    """Per call: whether the backend failed at some point while serving it."""

    backend_failed: bool = False


class FailOpen:
    """Runs backend operations so that a failure becomes a default answer, never an error."""

    def __init__(self, *, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None and self._clock() < self._retry_at

    async def run(
        self,
        operation: Awaitable[T],
        default: D,
        state: _CallState | None = None,
        *,
        force: bool = False,
    ) -> T | D:
        """`operation`'s result, or `default` if the backend fails or is known to be down
        (`force` tries anyway: for writes other gateways are waiting on)."""
        if self.down and not force:
            _close(operation)
            if state is not None:
                state.backend_failed = True
            return default
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation
        except OUTAGE_ERRORS as exc:  # unreachable or slow: serve without the cache
            if state is not None:
                state.backend_failed = True
            if self._down_since is None:
                self._down_since = self._clock()
                _log.warning(
                    "cache backend unavailable; serving from the upstream without it",
                    extra={"error": type(exc).__name__},
                )
            self._retry_at = self._clock() + RETRY_BACKEND_AFTER
            return default
        except Exception as exc:  # it answered, but not sensibly: this operation only
            if state is not None:
                state.backend_failed = True
            _log.warning("cache backend error", extra={"error": type(exc).__name__})
            return default
        if self._down_since is not None:
            _log.info(
                "cache backend is back",
                extra={"outage_seconds": round(self._clock() - self._down_since, 3)},
            )
            self._down_since = None
        return result

    async def must(self, operation: Callable[[], Awaitable[object]], *, within: float) -> bool:
        """Retry a write others wait on (an entry, an outcome, an unlock) for `within` s."""
        deadline = time.monotonic() + within
        while True:
            sentinel = object()
            if await self.run(operation(), sentinel, force=True) is not sentinel:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS * 2)


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
        self._backend = FailOpen(timeout=backend_timeout, clock=clock)
        self._flights: dict[str, asyncio.Task[_Filled]] = {}
        self._balances: dict[str, tuple[float, float]] = {}

    @property
    def flights(self) -> int:
        return len(self._flights)

    async def generate(self, call: GenerationCall) -> Generated:
        scope = account_scope(call.key.value, self._upstream_url)
        if not is_cacheable(call.request):
            self._telemetry.cache_result("uncacheable")
            return await self._uncached(call, scope, CacheResult.CACHE_RESULT_UNCACHEABLE)
        if not call.cache_control.lookup:
            self._telemetry.cache_result("bypass")
            key = cache_key(call.request, scope) if call.cache_control.store else None
            return await self._uncached(call, scope, CacheResult.CACHE_RESULT_BYPASS, key)

        key = cache_key(call.request, scope)
        state = _CallState()
        stored = await self._backend.run(self._store.get(key), None, state)
        hit = await self._hit(stored, scope) if stored is not None else None
        if hit is not None:
            self._telemetry.cache_result("hit")
            return hit

        flight = self._flights.get(key)
        if flight is not None:
            self._telemetry.cache_result("coalesced")
            filled = await self._wait(flight, call.budget)
            return _as(filled.generated, CacheResult.CACHE_RESULT_COALESCED)

        # One result per call: `error` when the backend failed the lookup, else `miss`.
        self._telemetry.cache_result("error" if state.backend_failed else "miss")
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

    async def wait_idle(self) -> None:
        """Return when no flight is running (each ends by its own upstream timeout)."""
        while self._flights:
            await asyncio.wait(list(self._flights.values()))

    async def _uncached(
        self,
        call: GenerationCall,
        scope: str,
        result: generation_pb2.CacheResult.ValueType,
        key: str | None = None,
    ) -> Generated:
        generated = await self._inner.generate(call)
        await self._remember(scope, generated, key)
        return _as(generated, result)

    async def _hit(self, stored: bytes, scope: str) -> Generated | None:
        try:
            response = generation_pb2.GenerationResponse.FromString(stored)
        except DecodeError:
            response = None
        if response is None or len(response.outputs) == 0:  # never stored by us: garbage
            _log.warning("ignoring an unreadable cache entry")
            return None
        local = self._balances.get(scope)
        balance = local[1] if local else None
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
        seen_other_holder = False
        redis_lost = False
        while time.monotonic() < deadline:
            acquired = await self._backend.run(
                self._store.try_lock(key, token, LOCK_LEASE_SECONDS), UNKNOWN
            )
            if acquired is True:
                return await self._lead(shared_call, scope, key, token)
            if acquired is UNKNOWN and (not seen_other_holder or redis_lost):
                # Redis cannot tell, and nobody is known to be generating it (or Redis has
                # been gone longer than any lease would last): fail open.
                return _Filled(await self._generate_and_store(shared_call, scope, key), False)
            seen_other_holder = True
            waited = await self._await_holder(key, scope, deadline)
            if isinstance(waited, _Filled):
                return waited
            redis_lost = waited is _REDIS_LOST
            # Otherwise the holder let go with nothing stored and no outcome: try to lead.
        raise CallTimedOut(
            "another gateway's identical generation did not finish in time",
            reason="UPSTREAM_TIMEOUT",
        )

    async def _lead(self, call: GenerationCall, scope: str, key: str, token: str) -> _Filled:
        """Holding the lock: make the upstream call and publish how it ended, so waiting
        gateways get the result, the error, or the empty answer instead of paying again."""
        try:
            await self._backend.run(self._store.clear_outcome(key), None)
            stored = await self._backend.run(self._store.get(key), None)
            hit = await self._hit(stored, scope) if stored is not None else None
            if hit is not None:  # filled between our lookup and our lock
                return _Filled(hit, True)
            keeper = asyncio.create_task(self._keep_lease(key, token))
            try:
                generated = await self._inner.generate(call)
            except GatewayError as error:
                await self._publish_outcome(key, {"error": error_to_dict(error)})
                raise
            except BaseException:
                # Cancelled (shutdown past the grace period) or a bug: the upstream may
                # still charge for it, so nobody may send it again in the meantime.
                abandoned = UpstreamInternal(
                    "the gateway making this generation stopped before Stablecog answered; "
                    "it may have been charged, so check before retrying",
                    reason="GENERATION_ABANDONED",
                )
                await asyncio.shield(
                    self._publish_outcome(key, {"error": error_to_dict(abandoned)})
                )
                raise
            finally:
                keeper.cancel()
            await self._remember(scope, generated, key, must=True)
            if len(generated.response.outputs) == 0:  # paid for, never stored: share it
                answer = generated.response.SerializeToString(deterministic=True)
                await self._publish_outcome(key, {"response": base64.b64encode(answer).decode()})
            return _Filled(generated, False)
        finally:
            unlock = functools.partial(self._store.unlock, key, token)
            await asyncio.shield(self._backend.must(unlock, within=PUBLISH_WITHIN_SECONDS))

    async def _keep_lease(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_LEASE_SECONDS / 4)
            await self._backend.run(
                self._store.refresh_lock(key, token, LOCK_LEASE_SECONDS), None, force=True
            )

    async def _publish_outcome(self, key: str, outcome: dict[str, object]) -> None:
        value = json.dumps(outcome).encode()
        put = functools.partial(self._store.put_outcome, key, value, OUTCOME_TTL_SECONDS)
        await self._backend.must(put, within=PUBLISH_WITHIN_SECONDS)

    async def _read_outcome(self, key: str, scope: str) -> Generated | None:
        """A finished holder's outcome: raises its error, returns its empty answer, or None."""
        raw = await self._backend.run(self._store.get_outcome(key), None)
        if raw is None:
            return None
        try:
            outcome = json.loads(raw)
            if "error" in outcome:
                error = error_from_dict(outcome["error"])
            else:
                answer = base64.b64decode(outcome["response"])
                response = generation_pb2.GenerationResponse.FromString(answer)
                return Generated(response=response, cache_result=CacheResult.CACHE_RESULT_HIT)
        except (ValueError, TypeError, KeyError, AttributeError, DecodeError):
            _log.warning("ignoring an unreadable cache outcome")
            return None
        raise error

    async def _await_holder(
        self, key: str, scope: str, deadline: float
    ) -> _Filled | _RedisLost | None:
        """Wait while another gateway holds the lock. Returns its result, raises its error,
        `_REDIS_LOST` when Redis stayed unreachable for a whole lease, or None once the
        lock stayed gone with nothing published (then the caller tries to lead)."""
        unreachable_since: float | None = None
        unlocked_since: float | None = None
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            stored = await self._backend.run(self._store.get(key), UNKNOWN)
            if isinstance(stored, _Unknown):
                # Keep waiting through a short outage: the holder is probably still
                # generating, and generating here too would pay twice.
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > LOCK_LEASE_SECONDS:
                    return _REDIS_LOST
                continue
            unreachable_since = None
            hit = await self._hit(stored, scope) if stored is not None else None
            if hit is not None:
                return _Filled(hit, True)
            locked = await self._backend.run(self._store.locked(key), UNKNOWN)
            if locked is not False:
                unlocked_since = None
                continue
            outcome = await self._read_outcome(key, scope)
            if outcome is not None:
                return _Filled(outcome, True)
            # Gone with nothing published: Redis may have lost the lock (a restart) while
            # the holder still generates; its next lease refresh puts the lock back.
            unlocked_since = unlocked_since or time.monotonic()
            if time.monotonic() - unlocked_since > LOCK_LEASE_SECONDS / 3:
                return None
        raise CallTimedOut(
            "another gateway's identical generation did not finish in time",
            reason="UPSTREAM_TIMEOUT",
        )

    async def _generate_and_store(self, call: GenerationCall, scope: str, key: str) -> Generated:
        generated = await self._inner.generate(call)
        await self._remember(scope, generated, key)
        return generated

    async def _remember(
        self, scope: str, generated: Generated, key: str | None, *, must: bool = False
    ) -> None:
        """Store a successful response that has outputs (first: others may wait on it), and
        keep the newest balance."""
        if key is not None and len(generated.response.outputs) > 0:
            value = generated.response.SerializeToString(deterministic=True)
            put = functools.partial(self._store.put, key, value, self._ttl)
            if must:
                await self._backend.must(put, within=PUBLISH_WITHIN_SECONDS)
            else:
                await self._backend.run(put(), None)
        balance = generated.response.remaining_credits
        observed_at = generated.upstream_started_at or time.time()
        known = self._balances.get(scope)
        if known is None or observed_at >= known[0]:
            self._balances[scope] = (observed_at, balance)
        if self._store.shared:
            await self._backend.run(self._store.put_balance(scope, balance, observed_at), None)

    async def aclose(self) -> None:
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        if flights:  # let them publish that they were abandoned and release their locks
            await asyncio.wait(flights, timeout=PUBLISH_WITHIN_SECONDS * 2)
        await self._store.aclose()


def _as(generated: Generated, result: generation_pb2.CacheResult.ValueType) -> Generated:
    return Generated(
        response=generated.response,
        cache_result=result,
        upstream_seconds=generated.upstream_seconds
        if result != CacheResult.CACHE_RESULT_COALESCED
        else None,
        upstream_started_at=generated.upstream_started_at,
    )
