"""The open-file limit and the upstream pool match the concurrent-call cap (gateway.capacity).

Each case runs in a child process: the limits it sets are the process's own."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.capacity import FD_MARGIN, open_files_needed

_CHILD = """
import json, resource, sys
soft, hard = {soft}, {hard}
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from gateway.capacity import ensure_capacity
warnings = ensure_capacity({calls}, {pool})
print(json.dumps({{"warnings": warnings, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}}))
"""


def child(soft: int, hard: int, calls: int, pool: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(soft=soft, hard=hard, calls=calls, pool=pool)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_the_soft_limit_is_raised_to_what_the_cap_needs() -> None:
    result = child(soft=1024, hard=8000, calls=3000, pool=5000)
    assert result == {"warnings": [], "soft": 3000 + FD_MARGIN}


def test_a_hard_limit_too_low_is_raised_as_far_as_it_goes_and_said() -> None:
    result = child(soft=512, hard=2048, calls=3000, pool=3000)
    assert result["soft"] == 2048
    (warning,) = result["warnings"]  # type: ignore[misc]
    assert "open-file limit is 2048" in warning and str(open_files_needed(3000, 3000)) in warning


def test_a_pool_below_the_cap_is_warned_about_and_a_high_limit_left_alone() -> None:
    result = child(soft=8000, hard=8000, calls=3000, pool=100)
    assert result["soft"] == 8000
    (warning,) = result["warnings"]  # type: ignore[misc]
    assert "--upstream-max-connections (100) is below --max-concurrent-calls (3000)" in warning


def test_the_default_pool_is_the_default_cap() -> None:
    from gateway.config import Settings

    assert Settings().upstream_max_connections >= Settings().max_concurrent_calls


def test_grpc_pending_request_limits_stay_above_the_cap() -> None:
    from gateway.app import _server_options

    for cap in (10, 10_000, 50_000):
        options = dict(_server_options(cap))
        assert options["grpc.server.max_pending_requests"] > cap
        assert options["grpc.server.max_pending_requests_hard_limit"] > cap
