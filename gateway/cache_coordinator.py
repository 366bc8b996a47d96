"""Coalescing across gateways that share a backend: a lease lock per flight, published
outcomes, and waiting.

Exists only when the entry store is shared. The gateway that takes the lease makes the
one upstream call and publishes how it ended: the entry (through the cache), or an
outcome record (its error, an answer with no outputs, or GENERATION_ABANDONED when it
was stopped mid-call). Those writes are retried past a short outage; the lease is
refreshed (and re-created if the backend lost it in a restart). Waiters wait through
short outages rather than paying for the same generation themselves, and serve
themselves only once the backend has been gone for a whole lease.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from google.protobuf.message import DecodeError, Message

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import Balance
from gateway.cache_backend import BackendFailure, BackendGuard
from gateway.cache_store import EntryStore
from gateway.clock import Clock
from gateway.errors import (
    GatewayError,
    GenerationAbandoned,
    UpstreamTimedOut,
    error_from_dict,
    error_to_dict,
)
from gateway.generation import Generated
from gateway.tracing import TraceParent

M = TypeVar("M", bound=Message)

_log = logging.getLogger(__name__)

LOCK_LEASE_SECONDS = 10.0
POLL_SECONDS = 0.05
OUTCOME_TTL_SECONDS = 60.0
# How long the leader keeps retrying the writes other gateways wait on.
PUBLISH_WITHIN_SECONDS = 2.0


class SharedState(Protocol):
    """What gateways coordinate through. Every method may raise BackendFailure."""

    async def get_balance(self, scope: str) -> Balance | None: ...

    async def offer_balance(self, scope: str, balance: Balance) -> None:
        """Keep `balance` unless a newer one (gateway.balance) is already stored."""

    async def try_lock(self, key: str, token: str, lease: float) -> bool: ...

    async def refresh_lock(self, key: str, token: str, lease: float) -> None:
        """Extend our lease, or re-create it when the backend lost it."""

    async def unlock(self, key: str, token: str) -> None: ...

    async def holder(self, key: str) -> str | None:
        """The token of whoever holds the lease, or None."""

    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        """What a flight that stored no entry ended with (an error, or an empty answer)."""

    async def get_outcome(self, key: str) -> bytes | None: ...

    async def clear_outcome(self, key: str) -> None: ...


@dataclass(frozen=True)
class Filled:
    """A flight's result, and whether another gateway made the upstream call for it."""

    generated: Generated
    from_other_replica: bool
    # When another gateway made it: which one, and its call's span (W3C traceparent).
    generated_by: str | None = None
    leader_trace: str | None = None


@dataclass(frozen=True)
class LeaseToken:
    """What a lease holds: who holds it, the span of the call it generates for, and a
    nonce that makes it unique. Read by waiting gateways for their traces."""

    gateway: str
    traceparent: str
    nonce: str

    def encode(self) -> str:
        return f"{self.gateway}|{self.traceparent}|{self.nonce}"

    @classmethod
    def decode(cls, raw: str) -> LeaseToken | None:
        parts = raw.split("|")
        return cls(*parts) if len(parts) == 3 else None


class HolderGone(enum.Enum):
    """Why waiting on another gateway's lease ended without its result."""

    RELEASED = "the lease is gone and nothing was published"
    BACKEND_LOST = "the backend stayed unreachable for a whole lease"


def encode_outcome(outcome: GatewayError | Message) -> bytes:
    if isinstance(outcome, GatewayError):
        return json.dumps({"error": error_to_dict(outcome)}).encode()
    answer = outcome.SerializeToString(deterministic=True)
    return json.dumps({"response": base64.b64encode(answer).decode()}).encode()


def decode_outcome(raw: bytes) -> GatewayError | generation_pb2.GenerationResponse | None:
    """The outcome `encode_outcome` wrote; None when it is unreadable."""
    return decode_outcome_as(raw, generation_pb2.GenerationResponse)


def decode_outcome_as(raw: bytes, response_type: type[M]) -> GatewayError | M | None:
    """The outcome `encode_outcome` wrote, its response a `response_type` (an idempotency
    record of an upscale holds a CreateUpscaleResponse); None when it is unreadable."""
    try:
        outcome = json.loads(raw)
        if "error" in outcome:
            return error_from_dict(outcome["error"])
        return response_type.FromString(base64.b64decode(outcome["response"]))
    except (ValueError, TypeError, KeyError, AttributeError, DecodeError):
        return None


# What the cache lends a flight: read the entry as a hit, generate, store the result.
Lookup = Callable[[], Awaitable[Generated | None]]
Generate = Callable[[], Awaitable[Generated]]
Store = Callable[[Generated], Awaitable[bool]]  # True when an entry was stored


class CrossReplicaCoordinator:
    """Makes one upstream call per key across every gateway sharing the backend."""

    def __init__(
        self,
        shared: SharedState,
        entries: EntryStore,
        guard: BackendGuard,
        *,
        clock: Clock,
        upstream_timeout: float,
        gateway: str = "gateway",
    ) -> None:
        self._gateway = gateway.replace("|", "_")
        self._shared = shared
        self._entries = entries
        self._guard = guard
        self._clock = clock
        self._upstream_timeout = upstream_timeout
        self.waiting = 0  # flights of ours waiting on another gateway's lease

    async def balance(self, scope: str) -> Balance | None:
        """The newest shared balance, or None when unknown or the backend fails."""
        try:
            return await self._guard.run(lambda: self._shared.get_balance(scope))
        except BackendFailure:
            return None

    async def offer_balance(self, scope: str, balance: Balance) -> None:
        with contextlib.suppress(BackendFailure):
            await self._guard.run(lambda: self._shared.offer_balance(scope, balance))

    async def put_entry(self, key: str, value: bytes, ttl: float) -> bool:
        """Store an entry other gateways wait on, retrying past a short outage; True once
        stored."""
        return await self._guard.must(
            lambda: self._entries.put(key, value, ttl), within=PUBLISH_WITHIN_SECONDS
        )

    async def fill(
        self,
        key: str,
        *,
        lookup: Lookup,
        generate: Generate,
        store: Store,
        store_best_effort: Store,
        trace: TraceParent | None = None,
    ) -> Filled:
        """The one upstream call for `key`: lead it, or wait for the gateway leading it."""
        token = LeaseToken(
            self._gateway, trace.traceparent() if trace else "", secrets.token_hex(8)
        ).encode()
        deadline = self._clock.monotonic() + self._upstream_timeout
        seen_other_holder = False
        backend_lost = False
        while self._clock.monotonic() < deadline:
            try:
                acquired = await self._guard.run(
                    lambda: self._shared.try_lock(key, token, LOCK_LEASE_SECONDS)
                )
            except BackendFailure:
                if not seen_other_holder or backend_lost:
                    # The backend cannot tell, and nobody is known to be generating it (or
                    # it has been gone longer than any lease would last): fail open.
                    generated = await generate()
                    await store_best_effort(generated)
                    return Filled(generated, from_other_replica=False)
                acquired = False
            if acquired:
                return await self._lead(key, token, lookup, generate, store)
            seen_other_holder = True
            self.waiting += 1
            try:
                waited = await self._await_holder(key, lookup, deadline)
            finally:
                self.waiting -= 1
            if isinstance(waited, Filled):
                return waited
            backend_lost = waited is HolderGone.BACKEND_LOST
            # Otherwise the holder let go with nothing stored and no outcome: try to lead.
        raise _other_gateway_timed_out()

    async def _lead(
        self, key: str, token: str, lookup: Lookup, generate: Generate, store: Store
    ) -> Filled:
        """Holding the lease: make the upstream call and publish how it ended, so waiting
        gateways get the result, the error, or the empty answer instead of paying again."""
        try:
            with contextlib.suppress(BackendFailure):
                await self._guard.run(lambda: self._shared.clear_outcome(key))
            try:
                hit = await lookup()
            except BackendFailure:
                hit = None
            if hit is not None:  # filled between our lookup and our lock
                return Filled(hit, from_other_replica=True)
            keeper = asyncio.create_task(self._keep_lease(key, token))
            try:
                generated = await generate()
            except GatewayError as error:
                # An error about our caller (its budget) is not the waiters': publishing
                # nothing lets them lead in turn once the lease is gone.
                if not error.concerns_caller:
                    await asyncio.shield(self._publish(key, error))
                raise
            except BaseException:
                # Cancelled (shutdown past the grace period) or a bug: the upstream may
                # still charge for it, so nobody may send it again in the meantime.
                abandoned = GenerationAbandoned(
                    "the gateway making this generation stopped before Stablecog answered; "
                    "it may have been charged, so check before retrying"
                )
                await asyncio.shield(self._publish(key, abandoned))
                raise
            finally:
                keeper.cancel()
            # Paid for: make it reachable by the waiters even if we are cancelled now.
            await asyncio.shield(self._share(key, generated, store))
            return Filled(generated, from_other_replica=False)
        finally:
            await asyncio.shield(
                self._guard.must(
                    lambda: self._shared.unlock(key, token), within=PUBLISH_WITHIN_SECONDS
                )
            )

    async def _share(self, key: str, generated: Generated, store: Store) -> None:
        """The entry for waiters; or, when there is none (no outputs, or the entry write
        failed), the answer itself as the outcome, so nobody pays for it again."""
        if not await store(generated):
            await self._publish(key, generated.response)

    async def _keep_lease(self, key: str, token: str) -> None:
        while True:
            await self._clock.sleep(LOCK_LEASE_SECONDS / 4)
            with contextlib.suppress(BackendFailure):
                await self._guard.run(
                    lambda: self._shared.refresh_lock(key, token, LOCK_LEASE_SECONDS), force=True
                )

    async def _publish(
        self, key: str, outcome: GatewayError | generation_pb2.GenerationResponse
    ) -> None:
        value = encode_outcome(outcome)
        await self._guard.must(
            lambda: self._shared.put_outcome(key, value, OUTCOME_TTL_SECONDS),
            within=PUBLISH_WITHIN_SECONDS,
        )

    async def _holder(self, key: str) -> LeaseToken | bool:
        """Who holds the lease (True: held, but not by a token we can read; also when the
        backend cannot tell, so keep waiting), or False when nobody does."""
        try:
            raw = await self._guard.run(lambda: self._shared.holder(key))
        except BackendFailure:
            return True
        if raw is None:
            return False
        return LeaseToken.decode(raw) or True

    async def _read_outcome(self, key: str) -> Generated | None:
        """A finished holder's outcome: raises its error, returns its answer, or None when
        it published none (BackendFailure when that cannot be told)."""
        raw = await self._guard.run(lambda: self._shared.get_outcome(key))
        if raw is None:
            return None
        outcome = decode_outcome(raw)
        if outcome is None:
            _log.warning("ignoring an unreadable cache outcome")
            return None
        if isinstance(outcome, GatewayError):
            raise outcome
        return Generated(response=outcome, cache_result=generation_pb2.CACHE_RESULT_HIT)

    async def _await_holder(self, key: str, lookup: Lookup, deadline: float) -> Filled | HolderGone:
        """Wait while another gateway holds the lease. Returns its result, raises its
        error, or says why the wait ended without either."""
        unreachable_since: float | None = None
        unlocked_since: float | None = None
        holder: LeaseToken | None = None
        while self._clock.monotonic() < deadline:
            await self._clock.sleep(POLL_SECONDS)
            now = self._clock.monotonic()
            try:
                hit = await lookup()
                if hit is not None:
                    return self._from(holder, hit)
                held = await self._holder(key)
                outcome = None if held else await self._read_outcome(key)
            except BackendFailure:
                # Keep waiting through a short outage: the holder is probably still
                # generating (or published what we cannot read yet), and generating
                # here too would pay twice.
                if unreachable_since is None:
                    unreachable_since = now
                if now - unreachable_since > LOCK_LEASE_SECONDS:
                    return HolderGone.BACKEND_LOST
                continue
            unreachable_since = None
            if held:
                holder = held if isinstance(held, LeaseToken) else holder
                unlocked_since = None
                continue
            if outcome is not None:
                return self._from(holder, outcome)
            # Gone with nothing published: the backend may have lost the lease (a
            # restart) while the holder still generates; its next refresh puts it back.
            if unlocked_since is None:
                unlocked_since = now
            if now - unlocked_since > LOCK_LEASE_SECONDS / 3:
                return HolderGone.RELEASED
        raise _other_gateway_timed_out()

    @staticmethod
    def _from(holder: LeaseToken | None, generated: Generated) -> Filled:
        return Filled(
            generated,
            from_other_replica=True,
            generated_by=holder.gateway if holder else None,
            leader_trace=(holder.traceparent or None) if holder else None,
        )


def _other_gateway_timed_out() -> UpstreamTimedOut:
    return UpstreamTimedOut("another gateway's identical generation did not finish in time")
