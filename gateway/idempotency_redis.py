"""Idempotency records in Redis (implements gateway.idempotency.IdempotencyStore), on the
cache's Redis connection; its errors are converted by gateway.cache_redis's one table.

A record is two keys in one cluster slot (the hash tag `{record id}`): the record,
`{"fingerprint", "token"}` while running and `{"fingerprint", "outcome"}` once finished,
living for the window (and, while running, at least as long as the lease: a window
shorter than the call must not free the key mid-call); and the holder's lease, refreshed
while it runs. A release leaves `{"released": true}` for a lease, so a repeat polling the
record can tell a release (run it yourself) from Redis losing the record (wait for the
holder to put it back). Each operation is one script, so a claim, a finish or a release
is atomic.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from gateway.cache_backend import BackendMisbehaved
from gateway.cache_key import KEY_PREFIX
from gateway.cache_redis import converted
from gateway.idempotency import LEASE_SECONDS, Record

# How long a release is remembered: long enough for every repeat polling the record to see it.
RELEASED_SECONDS = LEASE_SECONDS

_DECODED = """
local function decoded(raw)
  local ok, record = pcall(cjson.decode, raw)
  if ok and type(record) == 'table' then return record end
  return {}
end
"""
# KEYS: record, lease, the token's void mark. ARGV: running record, token, lease ms,
# running record ms. Returns {1} when claimed (over nothing, or over a release), {2} when
# the claim was voided (it arrived after its caller gave up on it), else
# {0, record, lease exists}.
_CLAIM = (
    _DECODED
    + """
if redis.call('exists', KEYS[3]) == 1 then return {2} end
local current = redis.call('get', KEYS[1])
if not current or decoded(current)['released'] == true then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[4])
  redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return {1}
end
return {0, current, redis.call('exists', KEYS[2])}
"""
)
_READ = """
local current = redis.call('get', KEYS[1])
if not current then return {0} end
return {0, current, redis.call('exists', KEYS[2])}
"""
# The record's holder token, or '' (finished, or unreadable).
_HOLDER = (
    _DECODED
    + """
local function holder(raw)
  local token = decoded(raw)['token']
  if type(token) == 'string' then return token end
  return ''
end
"""
)
# ARGV: running record, token, lease ms, running record ms. Re-creates the record when
# Redis lost it; keeps it at least a lease.
_REFRESH = (
    _HOLDER
    + """
local current = redis.call('get', KEYS[1])
if not current then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[4])
elseif holder(current) ~= ARGV[2] then
  return 0
elseif redis.call('pttl', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('pexpire', KEYS[1], ARGV[3])
end
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
# ARGV: token, finished record, window ms. Written when ours, or when Redis lost it.
_FINISH = (
    _HOLDER
    + """
local current = redis.call('get', KEYS[1])
if current and holder(current) ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('del', KEYS[2])
return 1
"""
)
# KEYS: record, lease, the token's void mark. ARGV: token, lease ms. When the record is
# not ours (our claim may still be on its way: it timed out), void that claim.
_RELEASE = (
    _HOLDER
    + """
local current = redis.call('get', KEYS[1])
if current and holder(current) == ARGV[1] then
  redis.call('set', KEYS[1], '{"released":true}', 'PX', ARGV[2])
  redis.call('del', KEYS[2])
  return 1
end
redis.call('set', KEYS[3], '1', 'PX', ARGV[2])
return 0
"""
)


def _keys(record: str) -> tuple[str, str]:
    base = f"{KEY_PREFIX}idem:{{{record}}}"
    return base, f"{base}:lease"


def _void(record: str, token: str) -> str:
    return f"{_keys(record)[0]}:void:{token}"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _running(fingerprint: str, token: str) -> str:
    return json.dumps({"fingerprint": fingerprint, "token": token})


def _record(reply: object) -> Record | None:
    """A script's {0, record, lease exists} as a Record ({0} alone: no record)."""
    if not isinstance(reply, list) or len(reply) not in (1, 3):
        raise BackendMisbehaved("unexpected idempotency script reply")
    if len(reply) == 1:
        return None
    raw, lease = reply[1], reply[2]
    try:
        stored = json.loads(raw)
        if stored.get("released") is True:
            return Record("", released=True)
        fingerprint = stored["fingerprint"]
        outcome = stored.get("outcome")
        if not isinstance(fingerprint, str) or not isinstance(outcome, str | None):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise BackendMisbehaved("unreadable idempotency record") from None
    if outcome is not None:
        return Record(fingerprint, outcome.encode())
    return Record(fingerprint, orphaned=not lease)


class RedisIdempotencyStore:
    """Idempotency records in Redis, shared by every gateway using it."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def claim(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> Record | None:
        with converted():
            reply = await self._redis.eval(
                _CLAIM, 3, *_keys(record), _void(record, token), _running(fingerprint, token),
                token, _ms(lease), _ms(max(window, lease)),
            )  # fmt: skip
        if isinstance(reply, list) and reply[:1] == [1]:
            return None
        if isinstance(reply, list) and reply[:1] == [2]:
            raise BackendMisbehaved("a voided idempotency claim")
        return _record(reply)

    async def read(self, record: str) -> Record | None:
        with converted():
            reply = await self._redis.eval(_READ, 2, *_keys(record))
        return _record(reply)

    async def refresh(
        self, record: str, fingerprint: str, token: str, *, lease: float, window: float
    ) -> None:
        with converted():
            await self._redis.eval(
                _REFRESH, 2, *_keys(record), _running(fingerprint, token), token, _ms(lease),
                _ms(max(window, lease)),
            )  # fmt: skip

    async def finish(
        self, record: str, fingerprint: str, token: str, outcome: bytes, *, window: float
    ) -> None:
        finished = json.dumps({"fingerprint": fingerprint, "outcome": outcome.decode()})
        with converted():
            await self._redis.eval(_FINISH, 2, *_keys(record), token, finished, _ms(window))

    async def release(self, record: str, token: str) -> None:
        with converted():
            await self._redis.eval(
                _RELEASE, 3, *_keys(record), _void(record, token), token, _ms(RELEASED_SECONDS)
            )
