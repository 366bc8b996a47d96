"""Redis URLs beyond one server: Sentinel URLs are checked at start, and shown without
their password."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings
from gateway.reachability import redis_address
from gateway.redis_url import sentinel_parts

SENTINEL = "redis+sentinel://:s3cret@10.0.0.1:26379,sentinel-2:26379/mymaster/2"


def test_a_sentinel_url_names_the_sentinels_service_and_db() -> None:
    assert sentinel_parts(SENTINEL) == (
        [("10.0.0.1", 26379), ("sentinel-2", 26379)], "mymaster", 2, "s3cret"
    )  # fmt: skip
    assert redis_address(SENTINEL) == (
        "redis+sentinel://10.0.0.1:26379,sentinel-2:26379/mymaster/2"
    )
    assert load_settings(["--budgets-redis", SENTINEL], {}).budgets_redis == SENTINEL


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.1/mymaster",  # no port
        "redis+sentinel://10.0.0.1:26379",  # no service
        "redis+sentinel://10.0.0.1:26379/mymaster/db0",
    ],
)
def test_a_bad_sentinel_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_REDIS_URL"):
        load_settings(["--cache", "redis"], {"GATEWAY_REDIS_URL": url})
