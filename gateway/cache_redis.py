"""The Redis backend: shared entries, balances, lease locks and flight outcomes.

Imported only when the cache is Redis. Every error a redis-py call raises is converted
at this boundary into gateway.cache_backend's failure types by one table,
`REDIS_ERRORS` (tests prove every redis-py error class has its own row); anything else
it raises counts as the backend misbehaving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.asyncio as aioredis
import redis.exceptions as rx
from redis.asyncio import sentinel as async_sentinel
from redis.sentinel import MasterNotFoundError, SlaveNotFoundError

from gateway.balance import Balance
from gateway.cache_backend import BackendFailure, BackendMisbehaved, BackendUnavailable
from gateway.cache_key import KEY_PREFIX
from gateway.redis_client import connect

# Unavailable: the server cannot be reached or cannot serve right now (opens the circuit).
# Misbehaved: it answered this one operation with an error.
REDIS_ERRORS: dict[type[Exception], type[BackendFailure]] = {
    rx.ConnectionError: BackendUnavailable,
    rx.AuthenticationError: BackendUnavailable,
    rx.AuthorizationError: BackendUnavailable,
    rx.BusyLoadingError: BackendUnavailable,
    rx.MaxConnectionsError: BackendUnavailable,
    rx.ExternalAuthProviderError: BackendUnavailable,
    MasterNotFoundError: BackendUnavailable,
    SlaveNotFoundError: BackendUnavailable,
    async_sentinel.MasterNotFoundError: BackendUnavailable,
    async_sentinel.SlaveNotFoundError: BackendUnavailable,
    rx.TimeoutError: BackendUnavailable,
    rx.InvalidResponse: BackendUnavailable,  # a broken connection's garbage
    rx.ClusterError: BackendUnavailable,
    rx.ClusterDownError: BackendUnavailable,
    rx.MasterDownError: BackendUnavailable,
    rx.TryAgainError: BackendUnavailable,
    rx.ReadOnlyError: BackendUnavailable,  # a failover in progress
    rx.ResponseError: BackendMisbehaved,
    rx.NoScriptError: BackendMisbehaved,
    rx.OutOfMemoryError: BackendMisbehaved,
    rx.ExecAbortError: BackendMisbehaved,
    rx.NoPermissionError: BackendMisbehaved,
    rx.ModuleError: BackendMisbehaved,
    rx.NoSuchFieldsetError: BackendMisbehaved,
    rx.AuthenticationWrongNumberOfArgsError: BackendMisbehaved,
    rx.AskError: BackendMisbehaved,
    rx.MovedError: BackendMisbehaved,
    rx.ClusterCrossSlotError: BackendMisbehaved,
    rx.DataError: BackendMisbehaved,
    rx.PubSubError: BackendMisbehaved,
    rx.WatchError: BackendMisbehaved,
    rx.LockError: BackendMisbehaved,
    rx.LockNotOwnedError: BackendMisbehaved,
    rx.RedisError: BackendMisbehaved,
    # Below redis-py: the socket itself.
    OSError: BackendUnavailable,
    TimeoutError: BackendUnavailable,
}


def failure_for(error: Exception) -> type[BackendFailure] | None:
    """The failure type for a foreign error (its nearest class in the table), or None."""
    for cls in type(error).__mro__:
        found = REDIS_ERRORS.get(cls)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def converted() -> Iterator[None]:
    """Raise whatever a redis-py call raises as BackendFailure (it wraps only redis-py
    calls: any exception there is the backend's, never a bug of ours). Cancellation
    passes through."""
    try:
        yield
    except Exception as error:
        failure = failure_for(error) or BackendMisbehaved
        raise failure(type(error).__name__) from error


_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# gateway.balance's rule (the later observation wins, ties too) on Balance.to_json's form,
# [observed_at, credits]; an unreadable stored value counts as absent.
_OFFER_BALANCE = """
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


def _bytes(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else value.encode()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBackend:
    """One Redis connection pool, seen as an entry store (`entries`, which closes it) and
    as the state gateways share to coordinate (`shared`)."""

    def __init__(self, url: str, *, timeout: float, cluster: bool = False) -> None:
        # One server, a Sentinel master or a Redis Cluster: every script here takes one key.
        self._redis: aioredis.Redis = connect(url, timeout=timeout, cluster=cluster)
        self.entries = RedisEntries(self._redis)
        self.shared = RedisShared(self._redis)

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool, for other stores on the same Redis (gateway.idempotency_redis)."""
        return self._redis

    async def ping(self) -> None:
        """One PING (gateway.reachability's check); raises BackendFailure."""
        with converted():
            await self._redis.ping()


class RedisEntries:
    """Cache entries in Redis (implements gateway.cache_store.EntryStore)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get(self, key: str) -> bytes | None:
        with converted():
            return _bytes(await self._redis.get(key))

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        with converted():
            await self._redis.set(key, value, px=_ms(ttl))

    async def aclose(self) -> None:
        await self._redis.aclose()


class RedisShared:
    """What gateways sharing Redis coordinate through (implements
    gateway.cache_coordinator.SharedState)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def get_balance(self, scope: str) -> Balance | None:
        with converted():
            raw = await self._redis.get(_balance_key(scope))
        return None if raw is None else Balance.from_json(raw)

    async def offer_balance(self, scope: str, balance: Balance) -> None:
        with converted():
            await self._redis.eval(
                _OFFER_BALANCE,
                1,
                _balance_key(scope),
                repr(balance.observed_at),
                balance.to_json(),
                BALANCE_TTL_SECONDS,
            )

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        with converted():
            return bool(await self._redis.set(_lock_key(key), token, nx=True, px=_ms(lease)))

    async def refresh_lock(self, key: str, token: str, lease: float) -> None:
        with converted():
            await self._redis.eval(_REFRESH, 1, _lock_key(key), token, _ms(lease))

    async def unlock(self, key: str, token: str) -> None:
        with converted():
            await self._redis.eval(_UNLOCK, 1, _lock_key(key), token)

    async def holder(self, key: str) -> str | None:
        with converted():
            raw = _bytes(await self._redis.get(_lock_key(key)))
        return None if raw is None else raw.decode(errors="replace")

    async def put_outcome(self, key: str, value: bytes, ttl: float) -> None:
        with converted():
            await self._redis.set(_outcome_key(key), value, px=_ms(ttl))

    async def get_outcome(self, key: str) -> bytes | None:
        with converted():
            return _bytes(await self._redis.get(_outcome_key(key)))

    async def clear_outcome(self, key: str) -> None:
        with converted():
            await self._redis.delete(_outcome_key(key))


def _balance_key(scope: str) -> str:
    return f"{KEY_PREFIX}balance:{scope}"


def _lock_key(key: str) -> str:
    return f"{key}:lock"


def _outcome_key(key: str) -> str:
    return f"{key}:outcome"
