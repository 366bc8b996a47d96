"""The upscaler that sends every call to the upstream: translate, call with the safe
retries (gateway.upstream_calls), translate back, and report the credit where it is spent
(an upscale that outlives its caller in a shared flight was still paid for)."""

from __future__ import annotations

import random

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import Balance
from gateway.call import CallBudget
from gateway.circuit import CircuitBreaker
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.events import NULL_TELEMETRY, CreditsSpent, Telemetry, UpstreamFailed
from gateway.generation import MIN_GENERATION_SECONDS
from gateway.media import upscale_from_body, upscale_to_json
from gateway.retries import RetryPolicy
from gateway.upscale import UpscaleCall, Upscaled, ensure_time_to_upscale
from gateway.upstream import StablecogClient, UpstreamAnswer
from gateway.upstream_calls import with_retries
from gateway.upstream_defaults import UPSCALE_CREDITS


class UpstreamUpscaler:
    """Sends every upscale to the upstream (reported as UNCACHEABLE: no cache took part)."""

    def __init__(
        self,
        client: StablecogClient,
        *,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        min_upscale_seconds: float = MIN_GENERATION_SECONDS,
        retries: RetryPolicy | None = None,
        circuit: CircuitBreaker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._telemetry = telemetry
        self._clock = clock
        self._min_upscale_seconds = min_upscale_seconds
        self._retries = retries or RetryPolicy()
        self._circuit = circuit
        self._rng = rng or random.Random()

    async def upscale(self, call: UpscaleCall) -> Upscaled:
        ensure_time_to_upscale(call.budget, self._min_upscale_seconds)
        body = upscale_to_json(call.request)
        started_at = self._clock.wall()

        async def attempt(budget: CallBudget) -> UpstreamAnswer:
            nonlocal started_at
            started_at = self._clock.wall()
            return await self._client.create_upscale(body, call.key, budget, call.trace)

        try:
            answer = await with_retries(
                attempt,
                call.budget,
                policy=self._retries,
                clock=self._clock,
                rng=self._rng,
                min_seconds=self._min_upscale_seconds,
                telemetry=self._telemetry,
                circuit=self._circuit,
                what="upscale",
            )
        except GatewayError as error:
            raise about_the_upscale(error) from None
        try:
            response = upscale_from_body(answer.body)
        except GatewayError as error:  # a 200: charged, even if unreadable
            self._telemetry.emit(UpstreamFailed(error.reason))
            self._spent(call, call.request.model_id or "unknown", 0, None)
            raise
        balance = Balance(response.remaining_credits, observed_at=started_at)
        self._spent(call, response.settings.model_id, len(response.outputs), balance)
        return Upscaled(
            response=response,
            cache_result=generation_pb2.CACHE_RESULT_UNCACHEABLE,
            upstream_seconds=answer.seconds,
            balance=balance,
        )

    def _spent(
        self, call: UpscaleCall, model_id: str, returned: int, balance: Balance | None
    ) -> None:
        self._telemetry.emit(
            CreditsSpent(
                caller=call.caller,
                account=call.key.fingerprint,
                model_id=model_id,
                credits=UPSCALE_CREDITS,
                outputs_requested=UPSCALE_CREDITS if balance is not None else 0,
                outputs_returned=returned,
                balance=balance,
            )
        )


def about_the_upscale(error: GatewayError) -> GatewayError:
    """The same error, its message saying "upscale" where the generation's table says
    "generation" (the money words stay exact: "may have been charged", "nothing was sent")."""
    if "generation" not in error.message:
        return error
    return type(error)(
        error.message.replace("generations", "upscales").replace("generation", "upscale"),
        reason=error.reason,
        domain=error.domain,
        retry_after=error.retry_after,
        metadata=error.metadata,
        violations=error.violations,
    )
