"""What the gateway reports as it works: small event objects and the `Telemetry` sink.

Events are emitted where things happen (an upstream request ends, credits are spent),
not when the caller is answered, so a generation that outlives its caller is still
counted. gateway.metrics turns each event type into collector updates; a test proves
it handles every type defined here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.balance import Balance


@dataclass(frozen=True)
class Event:
    """Base of every telemetry event."""


@dataclass(frozen=True)
class CallStarted(Event):
    """An RPC of ours started."""

    service: str
    method: str


@dataclass(frozen=True)
class CallHandled(Event):
    """An RPC of ours ended with `code` after `seconds`."""

    service: str
    method: str
    code: str
    seconds: float
    trace_id: str | None = None  # for an exemplar on the latency histogram


@dataclass(frozen=True)
class CallReplayed(Event):
    """An RPC of ours answered again from the cache hit it repeats (gateway.call_runner's
    `Replay`): one event for what a full hit reports in four (started, a cache hit,
    `credits` saved for `caller`, handled OK after `seconds`)."""

    service: str
    method: str
    caller: str
    credits: int
    seconds: float


@dataclass(frozen=True)
class UpstreamRequestEnded(Event):
    """One HTTP request to the upstream ended (status_class: 2xx..5xx, error, timeout)."""

    endpoint: str
    status_class: str
    seconds: float


@dataclass(frozen=True)
class UpstreamFailed(Event):
    """An upstream call failed with this ErrorInfo reason."""

    reason: str


@dataclass(frozen=True)
class UpstreamRetried(Event):
    """An upstream call that provably did nothing is tried again (gateway.retries)."""

    reason: str


@dataclass(frozen=True)
class CircuitChanged(Event):
    """The upstream circuit breaker changed state (closed 0, open 1, half_open 2)."""

    state: str
    value: int


@dataclass(frozen=True)
class CreditsSpent(Event):
    """The upstream generated (and charged for) images for `caller`.

    `balance` is None when the answer could not be read."""

    caller: str
    account: str
    model_id: str
    credits: int
    outputs_requested: int
    outputs_returned: int
    balance: Balance | None


@dataclass(frozen=True)
class BalanceObserved(Event):
    """An account's balance was read without spending (GetCredits)."""

    account: str
    balance: Balance


@dataclass(frozen=True)
class CreditsSaved(Event):
    """A call was served without a generation of its own (cache hit or coalesced)."""

    caller: str
    credits: int


@dataclass(frozen=True)
class CacheDecided(Event):
    """How a call was served: its `cache_result` (hit, miss, coalesced, bypass,
    uncacheable), the value its response and its `x-cache` trailer carry."""

    result: str


# What a call asks of the shared cache backend (Redis).
CACHE_BACKEND_OPERATIONS = ("lookup", "store")


@dataclass(frozen=True)
class CacheBackendFailed(Event):
    """The shared cache backend failed a call's lookup or store (one of
    CACHE_BACKEND_OPERATIONS); the call was served without it."""

    operation: str


@dataclass(frozen=True)
class IdempotentReplayed(Event):
    """A repeat of a call with the same idempotency key got the first call's outcome
    (`result`: ok, or error) instead of a generation of its own."""

    caller: str
    result: str


@dataclass(frozen=True)
class ValidationFailed(Event):
    """A request broke a documented constraint on this field."""

    field: str


@dataclass(frozen=True)
class CatalogChecksSkipped(Event):
    """A generation was validated without the catalog-aware checks: the model catalog was
    not fetched yet, or its last refresh failed."""


class Telemetry(Protocol):
    """Where events go; gateway.metrics implements it."""

    def emit(self, event: Event) -> None: ...


class NullTelemetry:
    """Reports nowhere."""

    def emit(self, event: Event) -> None:
        return None


NULL_TELEMETRY: Telemetry = NullTelemetry()
