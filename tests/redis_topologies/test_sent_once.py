"""Every Redis operation is sent once, on a Redis Cluster as on one server: a script that
ran but answered after `--redis-timeout` fails that call, and is not sent again.

redis-py's cluster client sends a command again after a timeout (ten times by default):
a late budget reservation ran eleven times (eleven reservations, one released), and an
idempotency claim sent again found its own record and waited on itself. Each client is
the gateway's own (gateway.redis_client.connect) on a real server."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from gateway.cache_backend import BackendUnavailable
from gateway.cache_redis import converted
from gateway.redis_client import connect
from tests.services import RedisClusterServers, RedisServer

# Counts its runs, then keeps the server busy past the client's timeout (Lua has no sleep).
LATE = """
local runs = redis.call('incr', KEYS[1])
local t = redis.call('time')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('time') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return runs
"""
TIMEOUT = 0.2


@pytest.mark.parametrize("topology", ["one server", "3-node cluster"])
async def test_a_script_answering_late_runs_once(
    topology: str, request: pytest.FixtureRequest
) -> None:
    admin: Any
    if topology == "one server":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = connect(server.url, timeout=TIMEOUT)
        admin = redis.Redis(unix_socket_path=str(server.socket_path))
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        client = connect(cluster.url, timeout=TIMEOUT, cluster=True)
        admin = redis.RedisCluster.from_url(cluster.url)
    key = "scgw:v1:test:{late}:runs"
    try:
        # Busy for 3 timeouts: every resend would run behind it, and count.
        with pytest.raises(BackendUnavailable), converted():
            await client.eval(LATE, 1, key, int(TIMEOUT * 3 * 1_000_000))
        assert int(admin.get(key)) == 1  # answered once the script is done
    finally:
        await client.aclose()
        admin.close()
