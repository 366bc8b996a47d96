"""The API's rate limit: go-chi/httprate's sliding-window counter, per client IP.

The estimated rate is the previous window's count weighted by how much of it still overlaps,
plus the current window's count; a request is refused when that (rounded) plus one exceeds
the limit. Refused requests are not counted. The clock is injected so tests can drive it.

Like sc-go's limiters, which share the Redis key prefix `api`, one counter per key serves routes
with different limits: each check may name its own limit (`check(key, limit=20)`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    """The outcome for one request and the `X-RateLimit-*` header values."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # unix seconds at which the current window ends

    def headers(self) -> dict[str, str]:
        """The headers httprate sets on every response that passes through it."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


def _go_round(value: float) -> int:
    """math.Round: halves away from zero (values here are never negative)."""
    return math.floor(value + 0.5)


class SlidingWindowLimiter:
    """`limit` requests per `window` seconds per key."""

    def __init__(
        self, limit: int, window: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        # key -> {window start: count}; only the current and previous windows are kept.
        self._counts: dict[str, dict[float, int]] = {}

    @property
    def limit(self) -> int:
        """Requests allowed per window."""
        return self._limit

    def check(self, key: str, limit: int | None = None) -> RateDecision:
        """Decide on one request for `key`, counting it if allowed.

        `limit` (default: the limiter's) is this route's limit, compared with the key's shared
        count.
        """
        limit = self._limit if limit is None else limit
        now = self._clock()
        current = math.floor(now / self._window) * self._window
        previous = current - self._window
        reset = math.floor(current + self._window)
        with self._lock:
            counts = self._counts.setdefault(key, {})
            for start in [s for s in counts if s < previous]:
                del counts[start]
            overlap = (self._window - (now - current)) / self._window
            rate = counts.get(previous, 0) * overlap + counts.get(current, 0)
            estimated = _go_round(rate)
            if estimated + 1 > limit:
                # Negative when other routes pushed the shared count past this route's limit,
                # as httprate prints it.
                return RateDecision(False, limit, limit - estimated, reset)
            counts[current] = counts.get(current, 0) + 1
            if len(self._counts) > 10_000:
                self._forget_idle(previous)
            return RateDecision(True, limit, limit - estimated - 1, reset)

    def _forget_idle(self, previous: float) -> None:
        idle = [k for k, c in self._counts.items() if not c or max(c) < previous]
        for key in idle:
            del self._counts[key]

    def clear(self) -> None:
        """Forget all counts."""
        with self._lock:
            self._counts.clear()
