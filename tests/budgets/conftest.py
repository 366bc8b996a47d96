"""What the budget tests share: a policy file and reading a refusal's details."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import RedisClusterServers

POLICY = """
callers:
  search:
    credits: {day: 6}
  batch:
    credits: {day: 100}
    max_in_flight: 1
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(POLICY)
    return path


# Gateway child processes (tests/lifecycle's fixture, one copy).
from tests.lifecycle.conftest import spawn  # noqa: E402, F401


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
