"""One way to open Redis, whatever stands behind the URL: one server (`redis://`,
`rediss://`, `unix://`), a master found through Sentinel (`redis+sentinel://`), or a Redis
Cluster (`--redis-cluster`). Every script the gateway runs touches keys of one hash slot
(gateway.budget_ledger_redis and gateway.idempotency_redis hash-tag their keys; the
cache's scripts take one key; tests/redis_topologies/test_hash_slots.py checks them all),
so each works on a cluster as on one server.

    redis+sentinel://[:password@]host:port[,host:port...]/<service name>[/<db>]

Every operation is sent once, on every topology: redis-py's cluster client would send a
command again after a timeout or a lost connection (ten times by default), and a script
that did run but answered late would run again (a budget reserved twice, an idempotency
claim that then waits on itself). What a failure means is the gateway's to decide (its
callers: the cache's circuit, budgets' fail-closed setting), not the driver's.

Imported only when Redis is used. Errors surface as redis-py's, converted at the one
boundary (gateway.cache_redis.converted).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.redis_url import SENTINEL_SCHEME, sentinel_parts


class _Cluster(RedisCluster):
    """redis-py's cluster client, closing its connections even right after a failed
    command (its own `aclose` then does nothing: it waits for a retry, which we never
    make, to set the cluster up again, and the connections were left to the collector)."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")


def connect(url: str, *, timeout: float, cluster: bool = False) -> Any:
    """A redis.asyncio client (Redis, or RedisCluster) for `url`."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if url.startswith(SENTINEL_SCHEME + "://"):
        sentinels, service, db, password = sentinel_parts(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels, sentinel_kwargs=options, password=password, **options
        )
        return sentinel.master_for(service, db=db, retry_on_timeout=False)
    if cluster:
        return _Cluster.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return aioredis.Redis.from_url(url, retry_on_timeout=False, health_check_interval=0, **options)
