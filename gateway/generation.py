"""One generation, from a validated request to a response: the pipeline the servicer drives.

`UpstreamGenerator` translates and calls the upstream. The cache (gateway.cache) wraps
it with the same `Generator` interface, so the servicer does not know whether a
response came from the upstream or from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.balance import Balance
from gateway.call import CacheControl, CallBudget
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError
from gateway.events import NULL_TELEMETRY, CreditsSpent, Telemetry, UpstreamFailed
from gateway.translate import request_to_json, response_from_body
from gateway.upstream import StablecogClient
from gateway.upstream_defaults import DEFAULT_NUM_OUTPUTS

CacheResult = generation_pb2.CacheResult


@dataclass(frozen=True)
class GenerationCall:
    """Everything needed to serve one validated request, for the caller it is made for."""

    request: generation_pb2.GenerationRequest
    key: ApiKey
    budget: CallBudget
    caller: str
    cache_control: CacheControl = field(default_factory=CacheControl)

    def with_budget(self, budget: CallBudget) -> GenerationCall:
        return replace(self, budget=budget)


@dataclass(frozen=True)
class Generated:
    """A response and how it was produced."""

    response: generation_pb2.GenerationResponse
    cache_result: generation_pb2.CacheResult.ValueType
    # Seconds the upstream took for this call; None when no upstream call was made for it.
    upstream_seconds: float | None = None
    # The balance the upstream reported, stamped with when the call that saw it started
    # (gateway.balance: the later start is the newer balance).
    balance: Balance | None = None

    def served_as(self, result: generation_pb2.CacheResult.ValueType) -> Generated:
        """This result as served to a call with cache result `result` (a coalesced
        waiter made no upstream call of its own)."""
        seconds = None if result == CacheResult.CACHE_RESULT_COALESCED else self.upstream_seconds
        return replace(self, cache_result=result, upstream_seconds=seconds)


class Generator(Protocol):
    async def generate(self, call: GenerationCall) -> Generated: ...


class UpstreamGenerator:
    """Sends every call to the upstream (reported as BYPASS: no cache took part)."""

    def __init__(
        self,
        client: StablecogClient,
        *,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._telemetry = telemetry
        self._clock = clock

    async def generate(self, call: GenerationCall) -> Generated:
        started_at = self._clock.wall()
        answer = await self._client.create_generation(
            request_to_json(call.request), call.key, call.budget
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
            cache_result=CacheResult.CACHE_RESULT_BYPASS,
            upstream_seconds=answer.seconds,
            balance=balance,
        )
