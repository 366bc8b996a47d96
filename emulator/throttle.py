"""The per-account generation queue of sc-go's `CreateGeneration`.

The real rules are in docs/upstream-api.md#queue-limits. Each account has a count of
generations in flight. A request that finds more than `limit` in flight does not fail: it
waits, polling every `interval x (waiting requests + 1)`, until the count is back to `limit`
or below. Only when more than `overflow_max` requests are already waiting does it give up with
`queue_limit_reached`. Like the real check (`nq > qMax`), up to `limit + 1` generations can be
in flight, and waiters are not served in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class QueueFull(Exception):
    """Too many requests already waiting: `queue_limit_reached`."""


class QueueThrottler:
    """In-flight and waiting counts per account."""

    def __init__(self) -> None:
        self._in_flight: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()

    def in_flight(self, account: str) -> int:
        """Generations of this account being worked on."""
        return self._in_flight[account]

    def waiting(self, account: str) -> int:
        """Requests of this account waiting for a turn."""
        return self._waiting[account]

    async def wait_for_turn(
        self, account: str, limit: int, overflow_max: int, interval: float
    ) -> None:
        """Return when the request may go ahead; raise QueueFull if the overflow is full.

        `limit` 0 turns the queue off.
        """
        if limit <= 0 or self._in_flight[account] <= limit:
            return
        if self._waiting[account] > overflow_max:
            raise QueueFull
        position = self._waiting[account] + 1
        self._waiting[account] += 1
        try:
            while True:
                await asyncio.sleep(interval * position)
                if self._in_flight[account] <= limit:
                    return
                position = self._waiting[account] + 1
        finally:
            self._waiting[account] -= 1
            if self._waiting[account] <= 0:
                del self._waiting[account]

    def started(self, account: str) -> None:
        """A generation was handed to the worker."""
        self._in_flight[account] += 1

    def finished(self, account: str) -> None:
        """A generation ended (success, failure or timeout)."""
        self._in_flight[account] -= 1
        if self._in_flight[account] <= 0:
            del self._in_flight[account]
