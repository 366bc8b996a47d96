"""Fixtures of the Redis topology tests: gateway child processes, and Redis as a 3-node
Cluster, behind a Sentinel, or with TLS (tests.services), each stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import make_pki
from tests.services import RedisSentinelServers, RedisTlsServer


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers(tmp_path_factory.mktemp("sentinel"))
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate `gateway`."""
    return make_pki(tmp_path_factory.mktemp("pki"), {"gateway": "DNS:gateway"})


@pytest.fixture
def redis_tls(tmp_path_factory: pytest.TempPathFactory, pki: Path) -> Iterator[RedisTlsServer]:
    server = RedisTlsServer(tmp_path_factory.mktemp("redis-tls"), pki)
    server.start("gateway")
    try:
        yield server
    finally:
        server.stop()
