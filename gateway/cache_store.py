"""Where cached generations live: the `EntryStore` interface and the in-process store.

An entry store holds opaque bytes under the keys gateway.cache_key builds. The Redis
store (gateway.cache_redis) is shared by every gateway using it; this one is private
to the process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from gateway.clock import SYSTEM_CLOCK, Clock


class EntryStore(Protocol):
    """Cache entries by key. A shared store may raise gateway.cache_backend.BackendFailure."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """A bounded in-process LRU: at most `max_entries` entries and `max_bytes` bytes."""

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        return self.lookup(key)

    def lookup(self, key: str) -> bytes | None:
        """`get`, synchronously (an entry read counts as a use, as there)."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock.monotonic():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock.monotonic() + ttl, value)
        self._bytes += len(value)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)

    async def aclose(self) -> None:
        pass
