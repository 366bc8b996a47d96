"""The generator that sends every call to the upstream: translate, call, translate back,
and report what was spent where it was spent."""

from __future__ import annotations

import random

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import Balance
from gateway.call import CallBudget
from gateway.circuit import CircuitBreaker
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.events import NULL_TELEMETRY, CreditsSpent, Telemetry, UpstreamFailed
from gateway.generation import (
    MIN_GENERATION_SECONDS,
    Generated,
    GenerationCall,
    ensure_time_to_generate,
)
from gateway.retries import RetryPolicy
from gateway.translate import request_to_json, response_from_body
from gateway.upstream import StablecogClient, UpstreamAnswer
from gateway.upstream_calls import with_retries
from gateway.upstream_defaults import DEFAULT_NUM_OUTPUTS


class UpstreamGenerator:
    """Sends every call to the upstream (reported as BYPASS: no cache took part)."""

    def __init__(
        self,
        client: StablecogClient,
        *,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        min_generation_seconds: float = MIN_GENERATION_SECONDS,
        retries: RetryPolicy | None = None,
        rng: random.Random | None = None,
        circuit: CircuitBreaker | None = None,
    ) -> None:
        self._circuit = circuit
        self._min_generation_seconds = min_generation_seconds
        self._retries = retries or RetryPolicy()
        self._rng = rng or random.Random()
        self._client = client
        self._telemetry = telemetry
        self._clock = clock

    async def generate(self, call: GenerationCall) -> Generated:
        ensure_time_to_generate(call, self._min_generation_seconds)
        body = request_to_json(call.request)
        started_at = self._clock.wall()

        async def attempt(budget: CallBudget) -> UpstreamAnswer:
            nonlocal started_at
            started_at = self._clock.wall()
            return await self._client.create_generation(body, call.key, budget, call.trace)

        answer = await with_retries(
            attempt,
            call.budget,
            policy=self._retries,
            clock=self._clock,
            rng=self._rng,
            min_seconds=self._min_generation_seconds,
            telemetry=self._telemetry,
            circuit=self._circuit,
        )
        # Reported here, not when the caller is answered: a generation that outlives its
        # caller (coalesced, cached) was still paid for.
        try:
            response = response_from_body(answer.body)
        except GatewayError as error:
            # A 200 means the upstream charged, even if its body is unreadable.
            requested = (
                call.request.num_outputs
                if call.request.HasField("num_outputs")
                else DEFAULT_NUM_OUTPUTS
            )
            self._telemetry.emit(UpstreamFailed(error.reason))
            self._telemetry.emit(
                CreditsSpent(
                    caller=call.caller,
                    account=call.key.fingerprint,
                    model_id=call.request.model_id or "unknown",
                    credits=requested,
                    outputs_requested=0,
                    outputs_returned=0,
                    balance=None,
                )
            )
            raise
        balance = Balance(credits=response.remaining_credits, observed_at=started_at)
        self._telemetry.emit(
            CreditsSpent(
                caller=call.caller,
                account=call.key.fingerprint,
                model_id=response.settings.model_id,
                credits=response.settings.num_outputs,
                outputs_requested=response.settings.num_outputs,
                outputs_returned=len(response.outputs),
                balance=balance,
            )
        )
        return Generated(
            response=response,
            cache_result=generation_pb2.CACHE_RESULT_BYPASS,
            upstream_seconds=answer.seconds,
            balance=balance,
        )
