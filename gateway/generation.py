"""One generation, from a validated request to a response: the pipeline the servicer drives.

`UpstreamGenerator` translates and calls the upstream. The cache (gateway.cache) wraps
it with the same `Generator` interface, so the servicer does not know whether a
response came from the upstream or from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.auth import ApiKey
from gateway.cache_key import DEFAULT_NUM_OUTPUTS
from gateway.calls import NullTelemetry, Telemetry, account_fingerprint, current_call
from gateway.errors import GatewayError
from gateway.translate import request_to_json, response_from_body
from gateway.upstream import CallBudget, StablecogClient

CacheResult = generation_pb2.CacheResult


@dataclass(frozen=True)
class CacheControl:
    """What the caller allows the cache to do (from `cache-control` metadata)."""

    lookup: bool = True
    store: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CacheControl:
        directives = {d.strip().lower() for d in (value or "").split(",")}
        if "no-store" in directives:
            return cls(lookup=False, store=False)
        if "no-cache" in directives:
            return cls(lookup=False, store=True)
        return cls()


@dataclass(frozen=True)
class GenerationCall:
    """Everything needed to serve one validated request."""

    request: generation_pb2.GenerationRequest
    key: ApiKey
    budget: CallBudget
    cache_control: CacheControl = CacheControl()


@dataclass(frozen=True)
class Generated:
    """A response and how it was produced."""

    response: generation_pb2.GenerationResponse
    cache_result: generation_pb2.CacheResult.ValueType
    # Seconds the upstream took for this call; None when no upstream call was made for it.
    upstream_seconds: float | None = None
    # Wall-clock time the upstream call that produced `response` started. The upstream
    # deducts credits when a generation starts, so of two balances the one from the later
    # start is the newer, whichever answer arrives last.
    upstream_started_at: float | None = None


class Generator(Protocol):
    async def generate(self, call: GenerationCall) -> Generated: ...


class UpstreamGenerator:
    """Sends every call to the upstream (reported as BYPASS: no cache took part)."""

    def __init__(self, client: StablecogClient, telemetry: Telemetry | None = None) -> None:
        self._client = client
        self._telemetry = telemetry or NullTelemetry()

    async def generate(self, call: GenerationCall) -> Generated:
        started_at = time.time()
        answer = await self._client.create_generation(
            request_to_json(call.request), call.key, call.budget
        )
        # Reported here, not when the caller is answered: a generation that outlives its
        # caller (coalesced, cached) was still paid for.
        record = current_call.get()
        caller = record.caller if record else "unknown"
        account = account_fingerprint(call.key.value)
        try:
            response = response_from_body(answer.body)
        except GatewayError as error:
            # A 200 means the upstream charged, even if its body is unreadable.
            requested = (
                call.request.num_outputs
                if call.request.HasField("num_outputs")
                else DEFAULT_NUM_OUTPUTS
            )
            self._telemetry.upstream_error(error.reason)
            self._telemetry.generation(
                caller=caller,
                account=account,
                model_id=call.request.model_id or "unknown",
                credits_spent=requested,
                outputs_requested=0,
                outputs_returned=0,
                remaining_credits=None,
                balance_observed_at=started_at,
            )
            raise
        self._telemetry.generation(
            caller=caller,
            account=account,
            model_id=response.settings.model_id,
            credits_spent=response.settings.num_outputs,
            outputs_requested=response.settings.num_outputs,
            outputs_returned=len(response.outputs),
            remaining_credits=response.remaining_credits,
            balance_observed_at=started_at,
        )
        return Generated(
            response=response,
            cache_result=CacheResult.CACHE_RESULT_BYPASS,
            upstream_seconds=answer.seconds,
            upstream_started_at=started_at,
        )
