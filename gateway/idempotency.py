"""Idempotency keys: a call carrying `idempotency-key` metadata is performed at most once
per key and account within a window.

`IdempotentGenerator` wraps the gateway's generator (the cache, or the upstream when the
cache is off). The first call with a key claims a record in an `IdempotencyStore` and
makes its generation in a task of its own, not bound by its caller's deadline (like a
cache flight: a caller that times out and repeats the call gets the result instead of
paying again). How it ends decides the record:

- a response: stored for the window; every repeat gets it back (CACHE_RESULT_REPLAYED,
  trailer `x-idempotent-replay: true`);
- an error that may have been charged (the error class's `may_have_been_charged`): stored
  too; repeats get the same error, marked as a replay, and nothing is sent again;
- an error where nothing was charged (validation, refunded worker failure, nothing sent,
  busy, circuit open): the record is released, so a repeat may run again.

A repeat while the first call is in flight waits for it within its own deadline: in this
process on the first call's task (a repeat's cancellation never cuts it), in another
gateway sharing Redis by polling the record. The holder of a record keeps a short lease
on it; a record still "running" whose lease is gone lost its gateway mid-call, and is
answered as GENERATION_ABANDONED (it may have been charged), never run again. A record
that vanishes while a repeat polls it was lost by the store, not released (a release
says so): the repeat waits for the holder to put it back rather than pay again.

The same key with another request (another fingerprint) is refused with
IDEMPOTENCY_KEY_REUSED and nothing is sent. Keys are stored only as digests: the record
id is a keyed digest of the account's cache scope (itself a keyed digest of the API key)
and the idempotency key. When the shared store cannot be reached as a keyed call starts,
the call fails closed (IDEMPOTENCY_STORE_UNAVAILABLE, nothing sent): its caller asked
for at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.cache_backend import BackendFailure, BackendGuard
from gateway.cache_coordinator import (
    PUBLISH_WITHIN_SECONDS,
    decode_outcome,
    decode_outcome_as,
    encode_outcome,
)
from gateway.call import CallBudget, cache_result_name
from gateway.clock import Clock
from gateway.errors import (
    CallTimedOut,
    DeadlineTooShort,
    GatewayError,
    GenerationAbandoned,
    IdempotencyKeyReused,
    IdempotencyStoreUnavailable,
    UpstreamTimedOut,
    error_from_dict,
    error_to_dict,
)
from gateway.events import NULL_TELEMETRY, CacheDecided, IdempotentReplayed, Telemetry
from gateway.generation import (
    MIN_GENERATION_SECONDS,
    Generated,
    GenerationCall,
    Generator,
    ensure_time_to_generate,
)
from gateway.upscale import UpscaleCall, Upscaled, Upscaler, ensure_time_to_upscale

_log = logging.getLogger(__name__)
T = TypeVar("T")
Outcome = GatewayError | Message

_RECORD_KEY = b"stablecog-gateway idempotency record v1"
# How long a holder's claim lives without a refresh (refreshed every quarter of it).
LEASE_SECONDS = 30.0
POLL_SECONDS = 0.1
# How long a record held elsewhere may be missing from the store (lost, not released)
# before its holder is taken to be gone too: two of its lease refreshes.
MISSING_SECONDS = LEASE_SECONDS / 2
# ErrorInfo metadata of a replayed error.
REPLAY_METADATA = "idempotent_replay"
REPLAY_TRAILER = "x-idempotent-replay"


def record_id(scope: str, idempotency_key: str) -> str:
    """The record's name: a keyed digest of the account's scope and the caller's key
    (neither the API key nor the idempotency key can be recovered from it)."""
    message = f"{scope}\n{idempotency_key}".encode()
    return hmac.new(_RECORD_KEY, message, hashlib.sha256).hexdigest()


def request_fingerprint(request: Message, method: str = "") -> str:
    """A digest of the request exactly as the caller sent it (every field, deterministic
    serialization): a repeat must be the same request, not merely one the cache would
    treat alike (the cache key ignores whether a seed was given, and cuts prompts).
    A method other than CreateGeneration is part of it (`method`), so the same key on
    another method is another request, and no record is read as the other's answer."""
    serialized = request.SerializeToString(deterministic=True)
    prefix = f"{method}\n".encode() if method else b""
    return hashlib.sha256(prefix + serialized).hexdigest()


@dataclass(frozen=True)
class Record:
    """What the store holds for a key: the request's fingerprint and, once the first call
    ended, its outcome (`encode_outcome`'s bytes). `orphaned`: still running, but the
    holder's lease is gone (its gateway stopped mid-call)."""

    fingerprint: str
    outcome: bytes | None = None
    orphaned: bool = False
    # Released by its holder (nothing charged): a repeat may claim it. A store may instead
    # forget a released record (read: None).
    released: bool = False


class IdempotencyStore(Protocol):
    """Records by id. A shared store may raise gateway.cache_backend.BackendFailure."""

    async def claim(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> Record | None:
        """Create the record as running, held by `token`, and return None; or return the
        record that already exists (created by nobody else in between: atomic)."""

    async def read(self, record: str) -> Record | None: ...

    async def refresh(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> None:
        """Extend our lease; re-create our running record when the store lost it."""

    async def finish(
        self, record: str, fingerprint: str, token: str, outcome: bytes, *, window: float
    ) -> None:
        """Store the outcome for the window, unless another holder took the record over."""

    async def release(self, record: str, token: str) -> None:
        """Give up our running record: nothing was charged, a repeat may run again (read
        then says `released`, or None). When the record is not ours, a claim of `token`
        still on its way (it timed out) must not take it later."""


# The memory store's default bound in bytes: any caller can send a new key per call, and
# --idempotency-max-records (100,000) full-size outcomes would not fit a gateway pod's
# memory limit (k8s/); 32 MiB holds about 20,000 answers of 4 outputs.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# What a record costs beside its strings (measured with tracemalloc: tuple, dict slot).
RECORD_OVERHEAD_BYTES = 400


class MemoryIdempotencyStore:
    """Records in this process: at most `max_records` and about `max_bytes`, each for its
    window. A full store forgets the oldest finished record first; running ones are
    never forgotten (there are at most as many as calls in flight)."""

    def __init__(
        self, *, max_records: int, clock: Clock, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        # id -> (expires at, fingerprint, holder token or None once finished, outcome)
        self._records: OrderedDict[str, tuple[float, str, str | None, bytes | None]] = OrderedDict()
        self._max_records = max_records
        self._max_bytes = max_bytes
        self.bytes = 0  # what the records hold, roughly
        self._clock = clock

    def __len__(self) -> int:
        return len(self._records)

    @staticmethod
    def _size(record: str, value: tuple[float, str, str | None, bytes | None]) -> int:
        return len(record) + len(value[1]) + len(value[3] or b"") + RECORD_OVERHEAD_BYTES

    def _set(self, record: str, value: tuple[float, str, str | None, bytes | None]) -> None:
        self._drop(record)
        self._records[record] = value
        self.bytes += self._size(record, value)

    def _drop(self, record: str) -> None:
        found = self._records.pop(record, None)
        if found is not None:
            self.bytes -= self._size(record, found)

    def _get(self, record: str) -> tuple[float, str, str | None, bytes | None] | None:
        found = self._records.get(record)
        if found is not None and found[0] <= self._clock.monotonic():
            self._drop(record)
            return None
        return found

    async def claim(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> Record | None:
        found = self._get(record)
        if found is not None:
            return Record(found[1], found[3])
        self._set(record, (self._clock.monotonic() + window, fingerprint, token, None))
        self._bound()
        return None

    async def read(self, record: str) -> Record | None:
        found = self._get(record)
        return None if found is None else Record(found[1], found[3])

    async def refresh(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> None:
        return None  # a holder in this process cannot vanish without finishing

    async def finish(
        self, record: str, fingerprint: str, token: str, outcome: bytes, *, window: float
    ) -> None:
        found = self._get(record)
        if found is None or found[2] == token:  # ours (or lost: we have its answer)
            self._set(record, (self._clock.monotonic() + window, fingerprint, None, outcome))
            self._bound()

    async def release(self, record: str, token: str) -> None:
        found = self._get(record)
        if found is not None and found[2] == token:
            self._drop(record)

    def _bound(self) -> None:
        while len(self._records) > self._max_records or self.bytes > self._max_bytes:
            oldest = next((k for k, v in self._records.items() if v[2] is None), None)
            if oldest is None:
                return
            self._drop(oldest)


R = TypeVar("R")


@dataclass(frozen=True)
class _Settled(Generic[R]):
    """How the first call with a key ended; `fresh` when this process just made it."""

    outcome: Outcome
    generated: R | None = None  # the fresh result with its balance and timing
    fresh: bool = False


class _Elsewhere:
    """The record is held by another gateway, still running."""


_ELSEWHERE = _Elsewhere()


@dataclass
class _Flight(Generic[R]):
    task: asyncio.Task[_Settled[R] | _Elsewhere]
    fingerprint: str


class KeyedCall(Protocol):
    """What a keyed call carries (gateway.generation's GenerationCall, gateway.upscale's
    UpscaleCall)."""

    @property
    def request(self) -> Message: ...
    @property
    def key(self) -> ApiKey: ...
    @property
    def budget(self) -> CallBudget: ...
    @property
    def caller(self) -> str: ...
    @property
    def idempotency_key(self) -> str | None: ...


C = TypeVar("C", bound=KeyedCall)
Inner = TypeVar("Inner")


class _IdempotentCalls(Generic[C, R, Inner]):
    """Performs each keyed call at most once per account and key; see the module docstring.
    A subclass says what the call is (`_perform`, `_shared`, `_replayed`, ...)."""

    _METHOD = ""  # part of the request fingerprint (none for CreateGeneration)

    def __init__(
        self,
        inner: Inner,
        store: IdempotencyStore,
        *,
        window: float,
        upstream_timeout: float,
        clock: Clock,
        guard: BackendGuard | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
        min_generation_seconds: float = MIN_GENERATION_SECONDS,
    ) -> None:
        self._inner = inner
        self._store = store
        self._window = window
        self._upstream_timeout = upstream_timeout
        self._clock = clock
        self._guard = guard  # set when the store is shared (Redis)
        self._telemetry = telemetry
        self._min_generation_seconds = min_generation_seconds
        self._flights: dict[str, _Flight[R]] = {}
        self.waiting = 0  # repeats polling a record another gateway holds
        self._voids: set[asyncio.Task[None]] = set()  # voiding claims that timed out

    @property
    def flights(self) -> int:
        return len(self._flights)

    # What a subclass says about its call.
    async def _perform(self, call: C) -> R:
        raise NotImplementedError

    def _shared(self, call: C, budget: CallBudget) -> C:
        """`call` with `budget` (a first call is not bound by its caller's deadline)."""
        raise NotImplementedError

    def _ensure_time(self, call: C) -> None:
        """Raise DeadlineTooShort when the caller's deadline leaves too little."""
        raise NotImplementedError

    def _response(self, result: R) -> Message:
        raise NotImplementedError

    def _decode(self, raw: bytes) -> Outcome | None:
        raise NotImplementedError

    def _replayed(self, response: Message) -> R:
        """A stored response as served to a repeat (CACHE_RESULT_REPLAYED)."""
        raise NotImplementedError

    async def _call(self, call: C) -> R:
        if call.idempotency_key is None:
            return await self._perform(call)
        record = record_id(call.key.cache_scope, call.idempotency_key)
        fingerprint = request_fingerprint(call.request, self._METHOD)
        deadline = self._clock.monotonic() + call.budget.seconds
        if not call.budget.caller_deadline:  # bounded all the same, past any first call
            deadline += LEASE_SECONDS
        while True:
            flight = self._flights.get(record)
            mine = flight is None
            if flight is None:
                flight = self._start(record, fingerprint, call)
            elif flight.fingerprint != fingerprint:
                raise _reused()
            settled = await self._wait(flight.task, call.budget, deadline)
            if isinstance(settled, _Elsewhere):
                found = await self._await_other(record, fingerprint, call.budget, deadline)
                if found is None:  # released with nothing charged: claim it ourselves
                    continue
                settled = found
            if not mine and isinstance(settled.outcome, DeadlineTooShort):
                continue  # the first caller's deadline, not ours
            return self._serve(settled, call.caller, replay=not (mine and settled.fresh))

    def _start(self, record: str, fingerprint: str, call: C) -> _Flight[R]:
        task = asyncio.create_task(
            self._lead(record, fingerprint, call), name=f"idempotent {record[:12]}"
        )
        flight: _Flight[R] = _Flight(task, fingerprint)
        self._flights[record] = flight
        task.add_done_callback(lambda done: self._landed(record, flight))
        return flight

    def _landed(self, record: str, flight: _Flight[R]) -> None:
        if self._flights.get(record) is flight:
            del self._flights[record]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here too, for when every waiter has gone

    async def _wait(
        self, task: asyncio.Task[_Settled[R] | _Elsewhere], budget: CallBudget, deadline: float
    ) -> _Settled[R] | _Elsewhere:
        """Wait for the first call's task without letting this caller's cancellation (or
        deadline) cut it."""
        if not budget.caller_deadline:
            return await asyncio.shield(task)
        try:
            async with asyncio.timeout(max(deadline - self._clock.monotonic(), 0.0)):
                return await asyncio.shield(task)
        except TimeoutError:
            raise _still_running() from None

    async def _lead(self, record: str, fingerprint: str, call: C) -> _Settled[R] | _Elsewhere:
        """Claim the record and make the call, or say how the record already stands."""
        token = secrets.token_hex(16)
        may_send = self._guard is None or not self._guard.down  # down: refused unsent
        try:
            existing = await self._run(
                lambda: self._store.claim(
                    record, fingerprint, token, lease=LEASE_SECONDS, window=self._window
                )
            )
        except BackendFailure:
            if may_send:
                # A claim that timed out may still land (a slow Redis runs it later): it
                # would hold the key with nobody generating, and its repeats would be
                # told GENERATION_ABANDONED. Void it, in the background.
                self._void_claim(record, token)
            raise IdempotencyStoreUnavailable(
                "the call carries an idempotency key and the store of keys (Redis) cannot be "
                "reached, so at most once cannot be promised; nothing was sent, retry shortly",
                retry_after=1.0,
            ) from None
        if existing is not None:
            return self._standing(existing, fingerprint)
        try:
            self._ensure_time(call)
        except DeadlineTooShort as error:
            await asyncio.shield(self._release(record, token))
            return _Settled(error, fresh=True)
        # Not bound by the first caller's deadline: a repeat may wait longer for it.
        shared_call = self._shared(call, CallBudget(self._upstream_timeout, caller_deadline=False))
        keeper = asyncio.create_task(self._keep_lease(record, fingerprint, token))
        try:
            generated = await self._perform(shared_call)
        except GatewayError as error:
            keeper.cancel()
            if error.may_have_been_charged:
                await asyncio.shield(self._finish(record, fingerprint, token, error))
            else:
                await asyncio.shield(self._release(record, token))
            return _Settled(error, fresh=True)
        except BaseException:
            # Cancelled (shutdown) or a bug: the upstream may still charge for it, so a
            # repeat must not send it again.
            keeper.cancel()
            await asyncio.shield(self._finish(record, fingerprint, token, _abandoned()))
            raise
        keeper.cancel()
        response = self._response(generated)
        await asyncio.shield(self._finish(record, fingerprint, token, response))
        return _Settled(response, generated, fresh=True)

    def _standing(self, existing: Record, fingerprint: str) -> _Settled[R] | _Elsewhere:
        """What a repeat gets from a record someone else created."""
        if existing.fingerprint != fingerprint:
            raise _reused()
        if existing.outcome is not None:
            outcome = self._decode(existing.outcome)
            if outcome is None:
                _log.warning("unreadable idempotency record; answered as abandoned")
                return _Settled(_abandoned())
            return _Settled(outcome)
        if existing.orphaned:
            return _Settled(_abandoned())
        return _ELSEWHERE

    async def _await_other(
        self, record: str, fingerprint: str, budget: CallBudget, deadline: float
    ) -> _Settled[R] | None:
        """Poll a record another gateway holds until it ends (None: it was released)."""
        self.waiting += 1
        try:
            return await self._poll(record, fingerprint, budget, deadline)
        finally:
            self.waiting -= 1

    async def _poll(
        self, record: str, fingerprint: str, budget: CallBudget, deadline: float
    ) -> _Settled[R] | None:
        missing_since: float | None = None
        while self._clock.monotonic() < deadline:
            await self._clock.sleep(POLL_SECONDS)
            try:
                found = await self._run(lambda: self._store.read(record))
            except BackendFailure:
                continue  # keep waiting through an outage: the holder is still generating
            if found is None:
                # Gone without a release: the store lost it (a restart, a flush). A holder
                # still at work puts it back at its next lease refresh (or with its
                # outcome); claiming it now could pay a second time.
                now = self._clock.monotonic()
                if missing_since is None:
                    missing_since = now
                elif now - missing_since >= MISSING_SECONDS:
                    return _Settled(_abandoned())
                continue
            missing_since = None
            if found.released:
                return None
            standing = self._standing(found, fingerprint)
            if isinstance(standing, _Settled):
                return standing
        if budget.caller_deadline:
            raise _still_running()
        raise UpstreamTimedOut(
            "the first call with this idempotency key, made by another gateway, did not "
            "finish in time"
        )

    def _serve(self, settled: _Settled[R], caller: str, *, replay: bool) -> R:
        outcome = settled.outcome
        if not replay:
            if isinstance(outcome, GatewayError):
                raise outcome
            assert settled.generated is not None
            return settled.generated
        if isinstance(outcome, GatewayError):
            if not outcome.may_have_been_charged:
                # Released, so not a replay: the same error reached a concurrent repeat.
                raise _copy(outcome, {})
            self._telemetry.emit(IdempotentReplayed(caller, "error"))
            raise _copy(outcome, {REPLAY_METADATA: "true"})
        self._telemetry.emit(IdempotentReplayed(caller, "ok"))
        self._telemetry.emit(CacheDecided(cache_result_name(generation_pb2.CACHE_RESULT_REPLAYED)))
        return self._replayed(outcome)

    async def _keep_lease(self, record: str, fingerprint: str, token: str) -> None:
        while True:
            await self._clock.sleep(LEASE_SECONDS / 4)
            with contextlib.suppress(BackendFailure):
                await self._run(
                    lambda: self._store.refresh(
                        record, fingerprint, token, lease=LEASE_SECONDS, window=self._window
                    ),
                    force=True,
                )

    async def _finish(self, record: str, fingerprint: str, token: str, outcome: Outcome) -> None:
        value = encode_outcome(outcome)
        stored = await self._must(
            lambda: self._store.finish(record, fingerprint, token, value, window=self._window)
        )
        if not stored:
            _log.warning(
                "the outcome of a call with an idempotency key could not be stored; a repeat "
                "is answered GENERATION_ABANDONED once the lease runs out",
                extra={"record": record[:12]},
            )

    async def _release(self, record: str, token: str) -> None:
        if not await self._must(lambda: self._store.release(record, token)):
            _log.warning(
                "an idempotency record could not be released; a repeat is answered "
                "GENERATION_ABANDONED once the lease runs out",
                extra={"record": record[:12]},
            )

    def _void_claim(self, record: str, token: str) -> None:
        async def void() -> None:
            if not await self._must(
                lambda: self._store.release(record, token), within=LEASE_SECONDS
            ):
                _log.warning(
                    "a timed-out idempotency claim could not be voided; if it landed, "
                    "repeats are answered GENERATION_ABANDONED",
                    extra={"record": record[:12]},
                )

        task = asyncio.create_task(void(), name=f"idempotent void {record[:12]}")
        self._voids.add(task)
        task.add_done_callback(self._voids.discard)

    async def _run(self, operation: Callable[[], Awaitable[T]], *, force: bool = False) -> T:
        if self._guard is None:
            return await operation()
        return await self._guard.run(operation, force=force)

    async def _must(
        self, operation: Callable[[], Awaitable[object]], *, within: float = PUBLISH_WITHIN_SECONDS
    ) -> bool:
        """A write others wait on, retried past a short outage; True once done."""
        if self._guard is None:
            await operation()
            return True
        return await self._guard.must(operation, within=within)

    async def wait_idle(self) -> None:
        """Return when no first call is running (each ends by its own upstream timeout)."""
        while self._flights:
            await asyncio.wait([f.task for f in self._flights.values()])

    async def aclose(self) -> None:
        for void in list(self._voids):
            void.cancel()
        tasks = [f.task for f in self._flights.values()]
        for task in tasks:
            task.cancel()
        if tasks:  # let them record that they were abandoned
            await asyncio.wait(tasks, timeout=PUBLISH_WITHIN_SECONDS * 2)


class IdempotentGenerator(_IdempotentCalls[GenerationCall, Generated, Generator]):
    """Keyed CreateGeneration calls, around the gateway's generator (the cache, or the
    upstream when the cache is off)."""

    async def generate(self, call: GenerationCall) -> Generated:
        if call.idempotency_key is None:  # most calls: straight through, no extra frames
            return await self._inner.generate(call)
        return await self._call(call)

    async def _perform(self, call: GenerationCall) -> Generated:
        return await self._inner.generate(call)

    def _shared(self, call: GenerationCall, budget: CallBudget) -> GenerationCall:
        return call.with_budget(budget)

    def _ensure_time(self, call: GenerationCall) -> None:
        ensure_time_to_generate(call, self._min_generation_seconds)

    def _response(self, result: Generated) -> Message:
        return result.response

    def _decode(self, raw: bytes) -> Outcome | None:
        return decode_outcome(raw)

    def _replayed(self, response: Message) -> Generated:
        assert isinstance(response, generation_pb2.GenerationResponse)  # as `_decode` read it
        copy = generation_pb2.GenerationResponse()
        copy.CopyFrom(response)
        return Generated(response=copy, cache_result=generation_pb2.CACHE_RESULT_REPLAYED)


class IdempotentUpscaler(_IdempotentCalls[UpscaleCall, Upscaled, Upscaler]):
    """Keyed CreateUpscale calls, around the upscale cache; its records share the store
    with the generations', told apart by the method in the request fingerprint."""

    _METHOD = "CreateUpscale"

    async def upscale(self, call: UpscaleCall) -> Upscaled:
        return await self._call(call)

    async def _perform(self, call: UpscaleCall) -> Upscaled:
        return await self._inner.upscale(call)

    def _shared(self, call: UpscaleCall, budget: CallBudget) -> UpscaleCall:
        return call.with_budget(budget)

    def _ensure_time(self, call: UpscaleCall) -> None:
        ensure_time_to_upscale(call.budget, self._min_generation_seconds)

    def _response(self, result: Upscaled) -> Message:
        return result.response

    def _decode(self, raw: bytes) -> Outcome | None:
        return decode_outcome_as(raw, generation_pb2.CreateUpscaleResponse)

    def _replayed(self, response: Message) -> Upscaled:
        assert isinstance(response, generation_pb2.CreateUpscaleResponse)  # as `_decode` read it
        copy = generation_pb2.CreateUpscaleResponse()
        copy.CopyFrom(response)
        return Upscaled(response=copy, cache_result=generation_pb2.CACHE_RESULT_REPLAYED)


def _copy(error: GatewayError, metadata: dict[str, str]) -> GatewayError:
    """A new instance of `error` (each caller raises its own), with `metadata` added."""
    data = error_to_dict(error)
    data["metadata"] = {**data["metadata"], **metadata}
    return error_from_dict(data)


def _reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "this idempotency key was used for a different request of this account within the "
        "idempotency window; use a new key for a new request. Nothing was sent"
    )


def _abandoned() -> GenerationAbandoned:
    return GenerationAbandoned(
        "the gateway making the first call with this idempotency key stopped before "
        "Stablecog answered; it may have been charged, so check before retrying with a new key"
    )


def _still_running() -> CallTimedOut:
    return CallTimedOut(
        "the call's deadline ran out while the first call with this idempotency key was "
        "still running; it continues: repeat with the same key to get its result"
    )
