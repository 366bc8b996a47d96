"""The in-process first tier in front of the shared (Redis) cache.

An entry is the immutable answer of one seeded generation, so a private copy is always
safe to serve. The tier keeps the most recently used entries (bounded in count and
bytes) for at most its own TTL, never longer than the cache's; the cache reads it before
Redis and writes it with Redis, so a hit there needs no Redis at all and an outage does
not turn hits into paid generations. An entry whose Redis write failed is remembered
(bounded) and written back once Redis answers again, so other gateways sharing the Redis
do not pay for what this one generated during the outage.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from gateway.cache_backend import RETRY_BACKEND_AFTER, BackendFailure
from gateway.cache_store import MemoryStore
from gateway.clock import Clock

Put = Callable[[str, bytes, float], Awaitable[None]]


class LocalTier:
    """Recent entries in this process, and those Redis has not stored yet."""

    def __init__(self, store: MemoryStore, *, ttl: float, max_unsynced: int, clock: Clock) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._max_unsynced = max_unsynced
        # Entries Redis failed to store, oldest first, with when they would expire there.
        self._unsynced: OrderedDict[str, float] = OrderedDict()
        self._retry_at = 0.0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def unsynced(self) -> int:
        return len(self._unsynced)

    async def get(self, key: str) -> bytes | None:
        return await self._store.get(key)

    async def keep(self, key: str, value: bytes, ttl: float) -> None:
        """Hold a copy for the shorter of `ttl` and the tier's own TTL."""
        await self._store.put(key, value, min(ttl, self._ttl))

    def not_stored(self, key: str, ttl: float) -> None:
        """Redis failed to store `key` (which the tier holds): write it back later. The
        oldest are dropped past the bound (they are re-generated when asked for)."""
        self._unsynced[key] = self._clock.monotonic() + ttl
        self._unsynced.move_to_end(key)
        while len(self._unsynced) > self._max_unsynced:
            self._unsynced.popitem(last=False)

    @property
    def write_back_due(self) -> bool:
        """Entries are waiting and the last attempt is at least a second old."""
        return bool(self._unsynced) and self._clock.monotonic() >= self._retry_at

    async def write_back(self, put: Put) -> int:
        """Write the waiting entries the tier still holds with `put` (the shared store's),
        oldest first, for what is left of their TTL; stop at the first failure (the rest
        wait for the next attempt, a second later). Returns how many were written."""
        written = 0
        while self._unsynced:
            key, expires_at = next(iter(self._unsynced.items()))
            left = expires_at - self._clock.monotonic()
            value = await self._store.get(key)
            if value is not None and left > 0:
                try:
                    await put(key, value, left)
                except BackendFailure:
                    self._retry_at = self._clock.monotonic() + RETRY_BACKEND_AFTER
                    return written
                written += 1
            # Unless it was marked again meanwhile (then it stays, for its new TTL).
            if self._unsynced.get(key) == expires_at:
                del self._unsynced[key]
        return written
