"""Fail-open for the cache backend: one failure type, one outage circuit, one decorator.

A backend (Redis) converts its own errors into `BackendFailure` at its boundary
(gateway.cache_redis); nothing above it sees a foreign exception type. `BackendGuard`
bounds every operation by a timeout and keeps the outage circuit: while the backend is
known to be down, operations fail at once (except writes others wait on, which
`force`); it is tried again a second later. `FailOpenEntries` is the entry store with
every operation run through the guard. Bugs in our own code are not BackendFailures
and are never hidden as "cache backend error".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.cache_store import EntryStore
from gateway.clock import Clock

_log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_BACKEND_AFTER = 1.0
MUST_RETRY_EVERY = 0.1


class BackendFailure(Exception):
    """The cache backend failed this operation; the cache serves without it."""


class BackendUnavailable(BackendFailure):
    """Unreachable or too slow: an outage (opens the circuit)."""


class BackendMisbehaved(BackendFailure):
    """It answered, but not sensibly (wrong type, script error): this operation only."""


class BackendGuard:
    """Runs backend operations under a timeout and an outage circuit shared by all of them."""

    def __init__(
        self,
        *,
        timeout: float,
        clock: Clock,
        retry_after: float = RETRY_BACKEND_AFTER,
        name: str = "cache backend",
        without: str = "serving from the upstream without it",
    ) -> None:
        # How logs name the backend and what the gateway does while it is down (the
        # budgets' Redis shares this boundary: gateway.budgets).
        self._name, self._without = name, without
        self._timeout = timeout
        self._clock = clock
        self._retry_after = retry_after
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None and self._clock.monotonic() < self._retry_at

    async def run(self, operation: Callable[[], Awaitable[T]], *, force: bool = False) -> T:
        """`operation()`'s result; raise BackendFailure when the backend fails it or is
        known to be down (`force` tries anyway: for writes other gateways wait on)."""
        if self.down and not force:
            raise BackendUnavailable(f"the {self._name} is down")
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation()
        except TimeoutError:
            self._outage("TimeoutError")
            raise BackendUnavailable(f"the {self._name} did not answer in time") from None
        except BackendUnavailable as exc:
            self._outage(str(exc))
            raise
        except BackendMisbehaved as exc:
            _log.warning(f"{self._name} error", extra={"error": str(exc)})
            raise
        if self._down_since is not None:
            _log.info(
                f"{self._name} is back",
                extra={"outage_seconds": round(self._clock.monotonic() - self._down_since, 3)},
            )
            self._down_since = None
        return result

    async def must(self, operation: Callable[[], Awaitable[object]], *, within: float) -> bool:
        """Retry a write others wait on (an entry, an outcome, an unlock) for `within`
        seconds; True once it succeeded."""
        deadline = self._clock.monotonic() + within
        while True:
            try:
                await self.run(operation, force=True)
                return True
            except BackendFailure:
                if self._clock.monotonic() >= deadline:
                    return False
            await self._clock.sleep(MUST_RETRY_EVERY)

    def _outage(self, error: str) -> None:
        if self._down_since is None:
            self._down_since = self._clock.monotonic()
            _log.warning(f"{self._name} unavailable; {self._without}", extra={"error": error})
        self._retry_at = self._clock.monotonic() + self._retry_after


class FailOpenEntries:
    """An entry store whose every operation runs through a `BackendGuard`."""

    def __init__(self, inner: EntryStore, guard: BackendGuard) -> None:
        self._inner = inner
        self._guard = guard

    async def get(self, key: str) -> bytes | None:
        return await self._guard.run(lambda: self._inner.get(key))

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._guard.run(lambda: self._inner.put(key, value, ttl))

    async def aclose(self) -> None:
        await self._inner.aclose()
