"""What an upscale is, between the media servicer and whoever produces it. Pure: no I/O.

The upscale's layers mirror the generation's (gateway.generation), outermost first:
idempotency keys (gateway.idempotency) -> the upscale cache, which coalesces identical
calls (gateway.upscale_cache) -> the caller's credit budget (gateway.budgets) -> the
upstream (gateway.upscale_upstream). Each is an `Upscaler`, so the servicer does not know
which of them answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.balance import Balance
from gateway.call import CacheControl, CallBudget
from gateway.errors import DeadlineTooShort
from gateway.tracing import TraceParent


@dataclass(frozen=True)
class UpscaleCall:
    """Everything needed to serve one validated upscale, for the caller it is made for."""

    request: generation_pb2.CreateUpscaleRequest
    key: ApiKey
    budget: CallBudget
    caller: str
    cache_control: CacheControl = field(default_factory=CacheControl)
    trace: TraceParent | None = None
    # The caller's `idempotency-key`; never shown, stored as a digest.
    idempotency_key: str | None = field(default=None, repr=False)
    principal: str = ""  # the authenticated caller whose budget pays (gateway.identity)

    def with_budget(self, budget: CallBudget) -> UpscaleCall:
        return replace(self, budget=budget)


@dataclass(frozen=True)
class Upscaled:
    """A response and how it was produced."""

    response: generation_pb2.CreateUpscaleResponse
    cache_result: generation_pb2.CacheResult.ValueType
    # Seconds the upstream took for this call; None when no upstream call was made for it.
    upstream_seconds: float | None = None
    # The balance the upstream reported, stamped with when its call started.
    balance: Balance | None = None

    def served_as(self, result: generation_pb2.CacheResult.ValueType) -> Upscaled:
        """This result as served to a call with cache result `result` (a copy of the
        response: waiters sharing a flight each get their own)."""
        response = generation_pb2.CreateUpscaleResponse()
        response.CopyFrom(self.response)
        seconds = None if result == generation_pb2.CACHE_RESULT_COALESCED else self.upstream_seconds
        return replace(self, response=response, cache_result=result, upstream_seconds=seconds)


class Upscaler(Protocol):
    async def upscale(self, call: UpscaleCall) -> Upscaled: ...


def ensure_time_to_upscale(budget: CallBudget, minimum: float) -> None:
    """Raise DeadlineTooShort when the caller's deadline leaves less than `minimum`."""
    if budget.caller_deadline and budget.seconds < minimum:
        raise DeadlineTooShort(
            f"the call's deadline leaves {budget.seconds:.3f} s, less than any upscale "
            f"takes ({minimum:g} s, --min-generation-deadline); nothing was sent and nothing "
            "was charged",
            metadata={"minimum_seconds": f"{minimum:g}"},
        )
