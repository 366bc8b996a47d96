"""What a generation is, between the servicer and whoever produces it. Pure: no I/O.

gateway.upstream_generator's `UpstreamGenerator` calls the upstream; the cache
(gateway.cache) wraps it with the same `Generator` interface, so the servicer does not
know whether a response came from the upstream or from the cache.
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
class GenerationCall:
    """Everything needed to serve one validated request, for the caller it is made for."""

    request: generation_pb2.GenerationRequest
    key: ApiKey
    budget: CallBudget
    caller: str
    cache_control: CacheControl = field(default_factory=CacheControl)
    trace: TraceParent | None = None  # the span of the call this generation is made for
    # The caller's `idempotency-key` (gateway.idempotency); never shown, stored as a digest.
    idempotency_key: str | None = field(default=None, repr=False)
    principal: str = ""  # the authenticated caller whose budget pays (gateway.identity)

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
        seconds = None if result == generation_pb2.CACHE_RESULT_COALESCED else self.upstream_seconds
        return replace(self, cache_result=result, upstream_seconds=seconds)


class Generator(Protocol):
    async def generate(self, call: GenerationCall) -> Generated: ...


class HitReplayer(Protocol):
    """What serves a hit again without awaiting (gateway.cache's `replay_hit`)."""

    @property
    def replays(self) -> bool: ...

    @property
    def largest_replayed_request(self) -> int: ...

    def replay_hit(self, request_bytes: bytes, scope: str) -> Generated | None: ...


# No generation is answered faster than this (docs/upstream-api.md#timeouts-and-latency):
# a caller whose deadline leaves less would pay for an answer it can never receive.
MIN_GENERATION_SECONDS = 1.0


def ensure_time_to_generate(call: GenerationCall, minimum: float) -> None:
    """Raise DeadlineTooShort when the caller's deadline leaves less than `minimum`."""
    if call.budget.caller_deadline and call.budget.seconds < minimum:
        raise DeadlineTooShort(
            f"the call's deadline leaves {call.budget.seconds:.3f} s, less than any generation "
            f"takes ({minimum:g} s, --min-generation-deadline); nothing was sent and nothing "
            "was charged",
            metadata={"minimum_seconds": f"{minimum:g}"},
        )
