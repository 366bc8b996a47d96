"""One charged upstream call (a generation, an upscale) with the safe retries of
gateway.retries and the circuit breaker around each try.

A try the upstream provably did not act on is tried again after a jittered wait, never past
the caller's deadline: when the next wait (plus the shortest possible call) does not fit,
the last error is answered at once, with its RetryInfo.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.call import CallBudget
from gateway.circuit import CircuitBreaker
from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.events import Telemetry, UpstreamRetried
from gateway.retries import RetryPolicy

_log = logging.getLogger(__name__)
T = TypeVar("T")


async def through_circuit(circuit: CircuitBreaker | None, attempt: Callable[[], Awaitable[T]]) -> T:
    """One try through the breaker (which may refuse it: nothing sent)."""
    if circuit is None:
        return await attempt()
    circuit.admit()
    try:
        answer = await attempt()
    except GatewayError as error:
        circuit.failed(error)
        raise
    except BaseException:
        circuit.released()
        raise
    circuit.succeeded()
    return answer


async def with_retries(
    attempt: Callable[[CallBudget], Awaitable[T]],
    budget: CallBudget,
    *,
    policy: RetryPolicy,
    clock: Clock,
    rng: random.Random,
    min_seconds: float,
    telemetry: Telemetry,
    circuit: CircuitBreaker | None = None,
    what: str = "generation",
) -> T:
    """`attempt(budget left)` until it succeeds or fails in a way not safe to retry."""
    began = clock.monotonic()
    tries = 1
    while True:
        spent = clock.monotonic() - began
        left = CallBudget(max(budget.seconds - spent, 0.0), budget.caller_deadline)
        try:
            return await through_circuit(circuit, functools.partial(attempt, left))
        except GatewayError as error:
            if tries >= policy.attempts or not policy.retryable(error):
                raise
            delay = policy.delay(tries, error, rng)
            if delay + min_seconds > budget.seconds - (clock.monotonic() - began):
                raise  # the wait does not fit the deadline: answer now, with RetryInfo
            telemetry.emit(UpstreamRetried(error.reason))
            _log.info(
                f"retrying an upstream {what} the upstream did not act on",
                extra={"reason": error.reason, "attempt": tries, "delay_seconds": delay},
            )
            await clock.sleep(delay)
            tries += 1
