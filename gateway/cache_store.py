"""Where cached generations live: in this process (bounded LRU with TTL) or in Redis.

Both stores hold opaque bytes under the keys gateway.cache_key builds, plus the
newest credit balance seen per account scope. The Redis store also offers a lease
lock, so gateway processes sharing Redis can coalesce identical calls.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis

from gateway.cache_key import KEY_PREFIX

Clock = Callable[[], float]

_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Keeps the balance observed latest; an unreadable stored value counts as absent.
_PUT_NEWER_BALANCE = """
local current = redis.call('get', KEYS[1])
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and tonumber(stored[1])
      and tonumber(stored[1]) > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
BALANCE_TTL_SECONDS = 7 * 86400
# Extends our lease; re-creates it when Redis lost it (a restart), so a waiting gateway
# does not take over a generation that is still running.
_REFRESH = """
local current = redis.call('get', KEYS[1])
if current == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not current then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


class CacheStore(Protocol):
    """What the cache needs from a backend. Every method may raise when the backend fails."""

    shared: bool  # True when other processes see the same entries (and the locks matter)

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def get_balance(self, scope: str) -> float | None: ...

    async def put_balance(self, scope: str, balance: float, observed_at: float) -> None:
        """Keep `balance` unless a balance observed later is already stored."""

    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        """What a flight that stored no entry ended with (an error, or an empty answer)."""

    async def get_outcome(self, key: str) -> bytes | None: ...

    async def clear_outcome(self, key: str) -> None: ...

    async def try_lock(self, key: str, token: str, lease: float) -> bool: ...

    async def refresh_lock(self, key: str, token: str, lease: float) -> None: ...

    async def unlock(self, key: str, token: str) -> None: ...

    async def locked(self, key: str) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """A bounded in-process LRU: at most `max_entries` entries and `max_bytes` bytes."""

    shared = False

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._balances: dict[str, tuple[float, float]] = {}
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
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self._max_bytes:
            return
        if key in self._entries:
            self._remove(key)
        self._entries[key] = (self._clock() + ttl, value)
        self._bytes += len(value)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._remove(next(iter(self._entries)))

    def _remove(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)

    async def get_balance(self, scope: str) -> float | None:
        found = self._balances.get(scope)
        return found[1] if found else None

    async def put_balance(self, scope: str, balance: float, observed_at: float) -> None:
        found = self._balances.get(scope)
        if found is None or observed_at >= found[0]:
            self._balances[scope] = (observed_at, balance)

    # In one process, waiters share a flight's outcome directly.
    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        pass

    async def get_outcome(self, key: str) -> bytes | None:
        return None

    async def clear_outcome(self, key: str) -> None:
        pass

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        return True  # in-process flights already coalesce within this process

    async def refresh_lock(self, key: str, token: str, lease: float) -> None:
        pass

    async def unlock(self, key: str, token: str) -> None:
        pass

    async def locked(self, key: str) -> bool:
        return False

    async def aclose(self) -> None:
        pass


class RedisStore:
    """Entries, balances and lease locks in Redis, shared by every gateway that uses it."""

    shared = True

    def __init__(self, url: str, *, timeout: float) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode()

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._redis.set(key, value, px=max(1, int(ttl * 1000)))

    async def get_balance(self, scope: str) -> float | None:
        raw = await self._redis.get(_balance_key(scope))
        if raw is None:
            return None
        try:
            return float(json.loads(raw)[1])
        except (ValueError, TypeError, IndexError, KeyError):
            return None  # unreadable: as if unknown

    async def put_balance(self, scope: str, balance: float, observed_at: float) -> None:
        await self._redis.eval(
            _PUT_NEWER_BALANCE,
            1,
            _balance_key(scope),
            repr(observed_at),
            json.dumps([observed_at, balance]),
            BALANCE_TTL_SECONDS,
        )

    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        await self._redis.set(_outcome_key(key), value, px=max(1, int(ttl * 1000)))

    async def get_outcome(self, key: str) -> bytes | None:
        value = await self._redis.get(_outcome_key(key))
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode()

    async def clear_outcome(self, key: str) -> None:
        await self._redis.delete(_outcome_key(key))

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        return bool(await self._redis.set(_lock_key(key), token, nx=True, px=int(lease * 1000)))

    async def refresh_lock(self, key: str, token: str, lease: float) -> None:
        await self._redis.eval(_REFRESH, 1, _lock_key(key), token, int(lease * 1000))

    async def unlock(self, key: str, token: str) -> None:
        await self._redis.eval(_UNLOCK, 1, _lock_key(key), token)

    async def locked(self, key: str) -> bool:
        return bool(await self._redis.exists(_lock_key(key)))

    async def aclose(self) -> None:
        await self._redis.aclose()


def _balance_key(scope: str) -> str:
    return f"{KEY_PREFIX}balance:{scope}"


def _lock_key(key: str) -> str:
    return f"{key}:lock"


def _outcome_key(key: str) -> str:
    return f"{key}:outcome"
