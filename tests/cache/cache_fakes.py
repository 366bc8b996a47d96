"""Fakes of the outside world for the cache's unit tests: an upstream generator the test
answers by hand, a shared backend in memory that can be made to fail, and a telemetry
sink tests can wait on. Nothing here sleeps: tests order events by awaiting them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.balance import Balance
from gateway.cache_backend import BackendUnavailable
from gateway.call import CacheControl, CallBudget
from gateway.events import Event
from gateway.generation import Generated, GenerationCall
from tests.conftest import ACCOUNT_KEY, FakeClock

CacheResult = generation_pb2.CacheResult
KEY = ApiKey(ACCOUNT_KEY, configured=True, upstream_url="http://upstream.test")


def generation_call(
    seed: int | None = 1,
    *,
    deadline: float | None = None,
    cache_control: CacheControl | None = None,
    num_outputs: int = 2,
) -> GenerationCall:
    request = generation_pb2.GenerationRequest(prompt="a lighthouse", num_outputs=num_outputs)
    if seed is not None:
        request.seed = seed
    budget = (
        CallBudget(deadline, caller_deadline=True)
        if deadline is not None
        else CallBudget(600.0, caller_deadline=False)
    )
    return GenerationCall(
        request=request,
        key=KEY,
        budget=budget,
        caller="svc",
        cache_control=cache_control or CacheControl(),
    )


def answer(outputs: int = 2, credits: float = 98.0, started_at: float = 1.0) -> Generated:
    response = generation_pb2.GenerationResponse(remaining_credits=credits)
    for i in range(outputs):
        response.outputs.add(id=f"out-{i}", url=f"https://img/{i}.jpeg", image_url="x")
    response.settings.num_outputs = 2
    return Generated(
        response=response,
        cache_result=CacheResult.CACHE_RESULT_BYPASS,
        upstream_seconds=0.5,
        balance=Balance(credits, observed_at=started_at),
    )


async def until(condition: Callable[[], bool], *, turns: int = 1000) -> None:
    """Let ready tasks run until `condition` holds (a bounded number of loop turns, no
    time passes)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def settle(clock: FakeClock, *, quiet_turns: int = 5, turns: int = 2000) -> None:
    """Let ready tasks run until nothing changes for a few loop turns (no time passes):
    every task is then asleep on the clock or waiting for the test."""
    last, quiet = -1, 0
    for _ in range(turns):
        await asyncio.sleep(0)
        now = clock.sleepers
        quiet = quiet + 1 if now == last else 0
        last = now
        if quiet >= quiet_turns:
            return
    raise AssertionError("tasks never settled")


class ManualGenerator:
    """An upstream generator whose every call waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: list[GenerationCall] = []
        self._answers: list[asyncio.Future[Generated]] = []

    async def generate(self, call: GenerationCall) -> Generated:
        self.calls.append(call)
        future: asyncio.Future[Generated] = asyncio.get_running_loop().create_future()
        self._answers.append(future)
        return await future

    async def started(self, count: int) -> None:
        await until(lambda: len(self.calls) >= count)

    def succeed(self, index: int = 0, generated: Generated | None = None) -> None:
        self._answers[index].set_result(generated or answer())

    def fail(self, index: int, error: BaseException) -> None:
        self._answers[index].set_exception(error)


class AnsweringGenerator:
    """An upstream generator that answers every call at once (balance falling by 2)."""

    def __init__(self) -> None:
        self.calls: list[GenerationCall] = []

    async def generate(self, call: GenerationCall) -> Generated:
        self.calls.append(call)
        n = len(self.calls)
        return answer(credits=100.0 - 2 * n, started_at=float(n))


@dataclass
class Recorder:
    """A Telemetry sink keeping every event."""

    events: list[Event] = field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


class FlakyEntries:
    """An entry store in memory that fails like an unreachable Redis while `down`."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ttls: dict[str, float] = {}
        self.down = False
        self.operations = 0

    def _check(self) -> None:
        self.operations += 1
        if self.down:
            raise BackendUnavailable("ConnectionError")

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.values.get(key)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        self.values[key] = value
        self.ttls[key] = ttl

    async def aclose(self) -> None:
        pass


class MemoryShared:
    """gateway.cache_coordinator.SharedState in memory: leases expire by a FakeClock."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.locks: dict[str, tuple[str, float]] = {}
        self.outcomes: dict[str, bytes] = {}
        self.balances: dict[str, Balance] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("ConnectionError")

    def _holder(self, key: str) -> str | None:
        found = self.locks.get(key)
        if found is None or found[1] <= self._clock.monotonic():
            self.locks.pop(key, None)
            return None
        return found[0]

    async def get_balance(self, scope: str) -> Balance | None:
        self._check()
        return self.balances.get(scope)

    async def offer_balance(self, scope: str, balance: Balance) -> None:
        self._check()
        if balance.supersedes(self.balances.get(scope)):
            self.balances[scope] = balance

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        self._check()
        if self._holder(key) is not None:
            return False
        self.locks[key] = (token, self._clock.monotonic() + lease)
        return True

    async def refresh_lock(self, key: str, token: str, lease: float) -> None:
        self._check()
        holder = self._holder(key)
        if holder in (None, token):
            self.locks[key] = (token, self._clock.monotonic() + lease)

    async def unlock(self, key: str, token: str) -> None:
        self._check()
        if self._holder(key) == token:
            del self.locks[key]

    async def holder(self, key: str) -> str | None:
        self._check()
        return self._holder(key)

    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        self._check()
        self.outcomes[key] = value

    async def get_outcome(self, key: str) -> bytes | None:
        self._check()
        return self.outcomes.get(key)

    async def clear_outcome(self, key: str) -> None:
        self._check()
        self.outcomes.pop(key, None)
