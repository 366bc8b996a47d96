"""Budgets in Redis, shared by every replica: gateway.budget_ledger's rules as Lua scripts.

Each caller's state is three keys with one hash tag (so one script touches one hash slot,
as Redis Cluster needs): `…{<caller digest>}:windows` (a hash of `s:<window>` spent and
`r:<window>` reserved credits), `…:leases` (reservation -> expiry, a sorted set) and
`…:held` (reservation -> "cost|window,window"). The keys have no TTL, so a Redis evicting
only keys with one (`volatile-lru`; every cache key has a TTL) never drops a budget; a
window's fields are deleted once it is over. Every script runs atomically, so two
gateways can never both admit the last credits. Errors are converted at the one Redis
boundary (gateway.cache_redis.converted, its REDIS_ERRORS table).

Imported only when budgets use Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import redis.asyncio as aioredis

from gateway.budget_ledger import Reserved, WindowState
from gateway.cache_key import KEY_PREFIX
from gateway.cache_redis import converted
from gateway.redis_client import connect

_PRELUDE = """
local windows, leases, held = KEYS[1], KEYS[2], KEYS[3]
local function finish(rid, actual)
  local entry = redis.call('hget', held, rid)
  redis.call('zrem', leases, rid)
  if not entry then return 0 end
  local sep = string.find(entry, '|', 1, true)
  local cost = tonumber(string.sub(entry, 1, sep - 1))
  local paid = actual or cost
  for wid in string.gmatch(string.sub(entry, sep + 1), '[^,]+') do
    redis.call('hincrby', windows, 'r:' .. wid, -cost)
    redis.call('hincrby', windows, 's:' .. wid, paid)
  end
  redis.call('hdel', held, rid)
  return 1
end
local function expire(now)
  for _, rid in ipairs(redis.call('zrangebyscore', leases, '-inf', now)) do
    finish(rid, nil)
  end
end
local function number(field)
  return tonumber(redis.call('hget', windows, field) or '0')
end
"""

# ARGV: now_ms, reservation, cost, expires_ms, max_in_flight (-1: none), the live window
# ids (comma-separated: never forgotten), then window id and limit pairs. Returns
# {refused, in_flight, spent1, reserved1, ...}.
_RESERVE = (
    _PRELUDE
    + """
local now, rid, cost = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local expires, max_in_flight = tonumber(ARGV[4]), tonumber(ARGV[5])
expire(now)
local in_flight = redis.call('zcard', leases)
local refused = 0
if max_in_flight >= 0 and in_flight >= max_in_flight then refused = -1 end
local result, ids, current = {}, {}, {}
for wid in string.gmatch(ARGV[6], '[^,]+') do current[wid] = true end
for i = 7, #ARGV, 2 do
  local wid, limit = ARGV[i], tonumber(ARGV[i + 1])
  local spent, reserved = number('s:' .. wid), number('r:' .. wid)
  table.insert(result, spent)
  table.insert(result, reserved)
  table.insert(ids, wid)
  current[wid] = true
  if refused == 0 and spent + reserved + cost > limit then refused = (i - 5) / 2 end
end
if refused == 0 then
  for _, wid in ipairs(ids) do redis.call('hincrby', windows, 'r:' .. wid, cost) end
  redis.call('hset', held, rid, cost .. '|' .. table.concat(ids, ','))
  redis.call('zadd', leases, expires, rid)
  in_flight = in_flight + 1
end
for _, f in ipairs(redis.call('hkeys', windows)) do
  local wid = string.sub(f, 3)
  if not current[wid] and number('r:' .. wid) <= 0 then redis.call('hdel', windows, f) end
end
table.insert(result, 1, in_flight)
table.insert(result, 1, refused)
return result
"""
)

# ARGV: reservation, actual credits.
_SETTLE = _PRELUDE + "return finish(ARGV[1], tonumber(ARGV[2]))\n"

# ARGV: now_ms, then window ids. Returns {in_flight, spent1, reserved1, ...}.
_USAGE = (
    _PRELUDE
    + """
expire(tonumber(ARGV[1]))
local result = {redis.call('zcard', leases)}
for i = 2, #ARGV do
  table.insert(result, number('s:' .. ARGV[i]))
  table.insert(result, number('r:' .. ARGV[i]))
end
return result
"""
)


def caller_keys(caller: str) -> list[str]:
    """The caller's three keys, one hash tag (a digest: no caller name in clear)."""
    tag = hashlib.sha256(caller.encode()).hexdigest()[:24]
    base = f"{KEY_PREFIX}budget:{{{tag}}}"
    return [f"{base}:windows", f"{base}:leases", f"{base}:held"]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _states(values: Sequence[object]) -> tuple[WindowState, ...]:
    numbers = [int(str(v)) for v in values]
    return tuple(WindowState(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2))


class RedisLedger:
    """A gateway.budget_ledger.Ledger in Redis (raises gateway.cache_backend failures)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._usage = client.register_script(_USAGE)

    @classmethod
    def from_url(cls, url: str, *, timeout: float, cluster: bool = False) -> RedisLedger:
        """A ledger on one server, a Sentinel master or a Redis Cluster (gateway.redis_client)."""
        return cls(connect(url, timeout=timeout, cluster=cluster))

    async def reserve(
        self,
        caller: str,
        reservation: str,
        cost: int,
        windows: Sequence[tuple[str, int]],
        *,
        max_in_flight: int,
        now: float,
        expires_at: float,
        live: Sequence[str] = (),
    ) -> Reserved:
        args: list[str | int] = [
            _ms(now),
            reservation,
            cost,
            _ms(expires_at),
            max_in_flight,
            ",".join(live),
        ]
        for window, limit in windows:
            args += [window, limit]
        with converted():
            raw = await self._reserve(keys=caller_keys(caller), args=args)
        return Reserved(int(raw[0]), int(raw[1]), _states(raw[2:]))

    async def settle(self, caller: str, reservation: str, actual: int, *, now: float) -> None:
        with converted():
            await self._settle(keys=caller_keys(caller), args=[reservation, actual])

    async def usage(
        self, caller: str, windows: Sequence[str], *, now: float
    ) -> tuple[int, tuple[WindowState, ...]]:
        with converted():
            raw = await self._usage(keys=caller_keys(caller), args=[_ms(now), *windows])
        return int(raw[0]), _states(raw[1:])

    async def aclose(self) -> None:
        await self._redis.aclose()
