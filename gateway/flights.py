"""In-process single flight: at most one task per key; identical calls wait on it.

A flight runs in a task of its own, so the caller that started it may cancel or run out of
deadline while it goes on for the others (and, paid for, still fills its cache). Waiters
share its outcome, errors included. Used by the generation cache (gateway.cache) and the
upscale cache (gateway.upscale_cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from gateway.call import CallBudget
from gateway.errors import GatewayError

T = TypeVar("T")


class Flights(Generic[T]):
    """The flights in progress, by key."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, key: str) -> asyncio.Task[T] | None:
        return self._tasks.get(key)

    def start(self, key: str, work: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        """Run `work()` as the flight for `key` (none may be running for it)."""
        assert key not in self._tasks
        task = asyncio.create_task(work(), name=f"{self._name} {key[-12:]}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._landed(key, done))
        return task

    def _landed(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, for when every waiter has gone

    async def wait_idle(self) -> None:
        """Return when no flight is running."""
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    async def aclose(self, within: float) -> None:
        """Cancel every flight (shutdown past the grace period) and let them end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)


async def wait_for(
    flight: asyncio.Task[T], budget: CallBudget, timed_out: Callable[[], GatewayError]
) -> T:
    """Wait for a flight within this caller's deadline, never letting this caller's
    cancellation or deadline cut it; `timed_out()` is raised when the deadline runs out."""
    if not budget.caller_deadline:
        return await asyncio.shield(flight)
    try:
        async with asyncio.timeout(budget.seconds):
            return await asyncio.shield(flight)
    except TimeoutError:
        raise timed_out() from None
