"""Limits that keep money from being spent on calls that cannot use the answer: prompts
far past what the upstream reads, and deadlines shorter than any generation."""

from __future__ import annotations

import grpc
import pytest

from emulator.server import Emulator
from tests.conftest import GatewayFactory
from tests.fixtures import call, request, upstream_calls
from tests.status import rich_error


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
async def test_a_prompt_past_the_maximum_is_a_bad_request(
    make_gateway: GatewayFactory, emulator: Emulator, field: str
) -> None:
    app = await make_gateway(max_prompt_chars=1000)
    fields = {"prompt": "a lighthouse", field: "x" * 1001}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(**fields))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.violations] == [field]
    assert "1000" in error.violations[0][1] and "500 bytes" in error.violations[0][1]
    assert upstream_calls(emulator) == 0
    # At the maximum it is fine.
    await call(app, request(**{**fields, field: "x" * 1000}))
    assert upstream_calls(emulator) == 1


@pytest.mark.parametrize("seed", [None, 5], ids=["unseeded", "seeded"])
async def test_a_deadline_shorter_than_any_generation_is_refused_before_spending(
    make_gateway: GatewayFactory, emulator: Emulator, seed: int | None
) -> None:
    app = await make_gateway(min_generation_deadline=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(seed=seed), timeout=0.5)
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "DEADLINE_TOO_SHORT"
    assert error.info.metadata["minimum_seconds"] == "1"
    assert "nothing was charged" in error.message
    assert upstream_calls(emulator) == 0
    counted = {
        result: app.registry.get_sample_value("stablecog_cache_requests_total", {"result": result})
        for result in ("miss", "uncacheable")
    }
    assert counted == {"miss": 0, "uncacheable": 0}  # a refused call was no cache decision
    await call(app, request(seed=seed), timeout=5)
    assert upstream_calls(emulator) == 1


async def test_a_short_deadline_is_fine_for_a_cache_hit(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(min_generation_deadline=1.0)
    await call(app, request(seed=8), timeout=5)
    _, result = await call(app, request(seed=8), timeout=0.5)
    assert result == "hit"
    assert upstream_calls(emulator) == 1
