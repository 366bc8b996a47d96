"""The circuit breaker: a run of upstream failures makes calls fail fast (UNAVAILABLE,
nothing sent) for a cool-down; one probe then decides; the state is a metric."""

from __future__ import annotations

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway.circuit import CircuitBreaker, CircuitState
from gateway.errors import CircuitOpen, UpstreamUnreachable
from gateway.upstream_generator import UpstreamGenerator
from tests.conftest import GatewayFactory
from tests.fixtures import call, request, upstream_calls
from tests.gateway.test_retries import SteppingClock, generation, generator_over, ok, status
from tests.status import rich_error


def breaker_over(
    script: list[httpx.Response | Exception], clock: SteppingClock
) -> tuple[UpstreamGenerator, list[httpx.Request], CircuitBreaker]:
    breaker = CircuitBreaker(failures=3, cool_down=10.0, clock=clock)
    generator, sent = generator_over(iter(script), clock, circuit=breaker, attempts=1)
    return generator, sent, breaker


async def test_failures_open_it_then_a_probe_closes_it() -> None:
    clock = SteppingClock()
    script: list[httpx.Response | Exception] = [httpx.ConnectError("refused")] * 3 + [ok()]
    generator, sent, breaker = breaker_over(script, clock)
    for _ in range(3):
        with pytest.raises(UpstreamUnreachable):
            await generator.generate(generation())
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpen) as caught:
        await generator.generate(generation())
    assert len(sent) == 3  # failed fast: nothing sent
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    clock.now += 10.0  # the cool-down passes
    await generator.generate(generation())  # the probe
    assert breaker.state is CircuitState.CLOSED and len(sent) == 4


async def test_a_failed_probe_opens_it_again() -> None:
    clock = SteppingClock()
    script: list[httpx.Response | Exception] = [status(502)] * 4
    generator, sent, breaker = breaker_over(script, clock)
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017, PT011 - INTERNAL, may have been charged
            await generator.generate(generation())
    clock.now += 10.0
    with pytest.raises(Exception):  # noqa: B017, PT011
        await generator.generate(generation())
    assert breaker.state is CircuitState.OPEN and len(sent) == 4
    with pytest.raises(CircuitOpen):
        await generator.generate(generation())
    assert len(sent) == 4


async def test_answers_the_upstream_gave_on_purpose_do_not_count() -> None:
    clock = SteppingClock()
    script: list[httpx.Response | Exception] = [status(400, "nsfw_prompt")] * 5
    generator, sent, breaker = breaker_over(script, clock)
    for _ in range(5):
        with pytest.raises(Exception):  # noqa: B017, PT011 - INVALID_ARGUMENT
            await generator.generate(generation())
    assert breaker.state is CircuitState.CLOSED and len(sent) == 5


async def test_through_the_emulator_the_state_is_a_metric(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(circuit_failures=2, circuit_cool_down=60)
    state = "stablecog_upstream_circuit_state"
    assert app.registry.get_sample_value(state) == 0
    emulator.faults.inject("http_status", count=2, status=503)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await call(app, request())
    assert app.registry.get_sample_value(state) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.info is not None and error.info.reason == "UPSTREAM_CIRCUIT_OPEN"
    assert "nothing was sent" in error.message and error.retry_delay is not None
    assert upstream_calls(emulator) == 2
