"""Safe retries: only what the upstream provably did not act on is tried again, inside the
caller's deadline, counted by reason; nothing that may have been charged is sent twice."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.call import CallBudget
from gateway.circuit import CircuitBreaker
from gateway.errors import UpstreamBusy, UpstreamConnectionLost, UpstreamUnreachable, WorkerFailed
from gateway.generation import GenerationCall
from gateway.retries import RetryPolicy
from gateway.upstream import StablecogClient
from gateway.upstream_generator import UpstreamGenerator
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, GatewayFactory
from tests.fixtures import call, request, upstream_calls
from tests.status import rich_error

OK_BODY = {
    "outputs": [{"id": "a", "url": "https://img/a.jpeg", "image_url": "https://img/a.jpeg"}],
    "remaining_credits": 99,
    "settings": {
        "model_id": "m",
        "scheduler_id": "s",
        "width": 512,
        "height": 512,
        "num_outputs": 1,
        "guidance_scale": 7,
        "inference_steps": 30,
    },
}


class SteppingClock:
    """A clock whose sleeps pass at once, moving monotonic time on by what was slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def answers(*responses: httpx.Response | Exception) -> Iterator[httpx.Response | Exception]:
    yield from responses


def generator_over(
    script: Iterator[httpx.Response | Exception],
    clock: SteppingClock,
    circuit: CircuitBreaker | None = None,
    **policy: object,
) -> tuple[UpstreamGenerator, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        outcome = next(script)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    client = StablecogClient("http://upstream.test", transport=httpx.MockTransport(handle))
    generator = UpstreamGenerator(
        client,
        clock=clock,
        min_generation_seconds=1.0,
        retries=RetryPolicy(**policy),  # type: ignore[arg-type]
        rng=random.Random(7),
        circuit=circuit,
    )
    return generator, sent


def generation(deadline: float | None = None) -> GenerationCall:
    budget = CallBudget(deadline, True) if deadline is not None else CallBudget(600.0, False)
    return GenerationCall(
        request=generation_pb2.GenerationRequest(prompt="p", num_outputs=1),
        key=ApiKey(ACCOUNT_KEY, configured=True),
        budget=budget,
        caller="svc",
    )


def ok() -> httpx.Response:
    return httpx.Response(200, json=OK_BODY)


def status(code: int, error: str | None = None, **headers: str) -> httpx.Response:
    body = json.dumps({"error": error}).encode() if error else b"too many requests"
    return httpx.Response(code, content=body, headers=headers)


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.ConnectError("refused"),
        status(429),
        status(400, "queue_limit_reached"),
        status(500, "runpod_failed"),
    ],
    ids=["connection-refused", "429", "queue-full", "refunded-worker-failure"],
)
async def test_what_the_upstream_did_not_act_on_is_retried(
    refusal: httpx.Response | Exception,
) -> None:
    clock = SteppingClock()
    generator, sent = generator_over(answers(refusal, ok()), clock)
    generated = await generator.generate(generation())
    assert len(generated.response.outputs) == 1
    assert len(sent) == 2 and len(clock.slept) == 1


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ReadError("reset after sending"), UpstreamConnectionLost),
        (status(502), Exception),
        (status(503, **{"retry-after": "1"}), Exception),
        (status(500, "An unknown error has occured"), Exception),
    ],
    ids=["lost-after-sending", "502", "503", "unknown-500"],
)
async def test_what_may_have_been_charged_is_never_retried(
    failure: httpx.Response | Exception, error: type[Exception]
) -> None:
    clock = SteppingClock()
    generator, sent = generator_over(answers(failure, ok()), clock)
    with pytest.raises(error):
        await generator.generate(generation())
    assert len(sent) == 1 and clock.slept == []


async def test_retry_after_is_honoured_and_attempts_are_bounded() -> None:
    clock = SteppingClock()
    refusals = [status(429, **{"retry-after": "3"}) for _ in range(5)]
    generator, sent = generator_over(answers(*refusals), clock, attempts=3)
    with pytest.raises(UpstreamBusy) as caught:
        await generator.generate(generation())
    assert len(sent) == 3
    assert len(clock.slept) == 2 and all(s >= 3.0 for s in clock.slept)
    assert caught.value.retry_after == 3.0  # the caller still gets RetryInfo


async def test_a_wait_that_does_not_fit_the_deadline_answers_at_once() -> None:
    clock = SteppingClock()
    generator, sent = generator_over(answers(status(429, **{"retry-after": "30"}), ok()), clock)
    with pytest.raises(UpstreamBusy) as caught:
        await generator.generate(generation(deadline=10.0))
    assert len(sent) == 1 and clock.slept == []
    assert caught.value.retry_after == 30.0


async def test_backoff_is_full_jitter_exponential() -> None:
    clock = SteppingClock()
    refusals = [httpx.ConnectError("refused") for _ in range(5)]
    generator, _ = generator_over(answers(*refusals), clock, attempts=5, base_delay=1.0)
    with pytest.raises(UpstreamUnreachable):
        await generator.generate(generation())
    assert len(clock.slept) == 4
    assert all(0.0 <= s <= 2**i for i, s in enumerate(clock.slept))


async def test_refunded_failures_are_not_retried_when_switched_off() -> None:
    clock = SteppingClock()
    generator, sent = generator_over(
        answers(status(500, "runpod_failed"), ok()), clock, retry_refunded=False
    )
    with pytest.raises(WorkerFailed):
        await generator.generate(generation())
    assert len(sent) == 1


async def test_through_the_emulator_a_refusal_is_retried_and_charged_once(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(upstream_retries=3)
    emulator.faults.inject("rate_limit", count=1)
    emulator.faults.inject("queue_full", count=1)
    response, _ = await call(app, request(num_outputs=2))
    assert len(response.outputs) == 2
    assert upstream_calls(emulator) == 3
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2  # charged once
    retried = {
        reason: app.registry.get_sample_value(
            "stablecog_upstream_retries_total", {"reason": reason}
        )
        for reason in ("RATE_LIMITED", "QUEUE_LIMIT_REACHED")
    }
    assert retried == {"RATE_LIMITED": 1, "QUEUE_LIMIT_REACHED": 1}


async def test_through_the_emulator_a_charged_drop_is_answered_not_resent(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(upstream_retries=3)
    emulator.faults.inject("drop_connection", count=1, charge=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(num_outputs=2))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.info is not None and error.info.reason == "UPSTREAM_CONNECTION_LOST"
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
