"""One way to open Redis, whatever stands behind the URL: one server (`redis://`,
`rediss://`, `unix://`), a master found through Sentinel (`redis+sentinel://`), or a Redis
Cluster (`--redis-cluster`). Every script the gateway runs touches keys of one hash slot
(gateway.budget_ledger_redis hash-tags a caller's keys; the cache's scripts take one key),
so each works on a cluster as on one server.

    redis+sentinel://[:password@]host:port[,host:port...]/<service name>[/<db>]

Imported only when Redis is used. Errors surface as redis-py's, converted at the one
boundary (gateway.cache_redis.converted).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from gateway.redis_url import SENTINEL_SCHEME, sentinel_parts


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
        return RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, retry_on_timeout=False, health_check_interval=0, **options)
