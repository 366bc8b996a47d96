"""Time as a seam: monotonic time, wall time and sleeping, injected so tests can fake them.

Everything in the gateway that measures, waits for or stamps time takes a `Clock`; only
`SystemClock` touches the real one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Where the gateway gets time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, deadlines, leases)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (ordering balances seen by different processes)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
