"""What one call did, gathered while it runs, for metrics and the access log.

The interceptor creates a `CallRecord` per RPC and makes it current (a context
variable, so it follows the call's task and the tasks it starts); the servicer fills
it in; at the end the interceptor logs it. Counters are reported as things happen
through `Telemetry`, so a generation that outlives its caller is still counted.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Protocol

from gateway._gen.stablecog.v1 import generation_pb2

_FINGERPRINT_KEY = b"stablecog-gateway account fingerprint v1"


def account_fingerprint(api_key: str) -> str:
    """A short, non-reversible label for an account's key (for metrics and logs)."""
    return hmac.new(_FINGERPRINT_KEY, api_key.encode(), hashlib.sha256).hexdigest()[:12]


@dataclass
class CallRecord:
    """Everything worth counting or logging about one call."""

    method: str
    request_id: str
    caller: str
    code: str = "OK"
    error_reason: str | None = None
    invalid_fields: tuple[str, ...] = ()
    account: str | None = None
    model_id: str | None = None
    outputs_requested: int = 0
    outputs_returned: int = 0
    remaining_credits: float | None = None
    cache_result: str | None = None
    upstream_seconds: float | None = None
    prompt_digest: str | None = None
    prompt: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def complete(
        self,
        response: generation_pb2.GenerationResponse,
        cache_result: generation_pb2.CacheResult.ValueType,
        upstream_seconds: float | None,
    ) -> None:
        """Fill in what a successful generation tells."""
        self.model_id = response.settings.model_id or self.model_id
        self.outputs_requested = response.settings.num_outputs or self.outputs_requested
        self.outputs_returned = len(response.outputs)
        self.remaining_credits = response.remaining_credits
        self.cache_result = cache_result_name(cache_result)
        self.upstream_seconds = upstream_seconds


def cache_result_name(value: generation_pb2.CacheResult.ValueType) -> str:
    """`CACHE_RESULT_HIT` -> `hit`: the label and `x-cache` value."""
    return generation_pb2.CacheResult.Name(value).removeprefix("CACHE_RESULT_").lower()


class Telemetry(Protocol):
    """Where the gateway reports what it does; gateway.metrics implements it. Every
    method does nothing here, so `NullTelemetry` is this protocol made concrete."""

    def upstream_request(self, endpoint: str, status_class: str, seconds: float) -> None:
        """One HTTP request to the upstream ended (status_class: 2xx..5xx, error, timeout)."""
        return None

    def upstream_error(self, reason: str) -> None:
        """The upstream call failed with this ErrorInfo reason."""
        return None

    def generation(
        self,
        *,
        caller: str,
        account: str,
        model_id: str,
        credits_spent: int,
        outputs_requested: int,
        outputs_returned: int,
        remaining_credits: float | None,
        balance_observed_at: float,
    ) -> None:
        """The upstream generated (and charged for) images.

        `remaining_credits` is None when the answer could not be read; the balance is
        from a call that started at `balance_observed_at` (wall clock), so a late
        answer to an early call does not overwrite a newer balance."""
        return None

    def credits_saved(self, *, caller: str, credits: int) -> None:
        """A call was served without a generation of its own (cache hit or coalesced)."""
        return None

    def cache_result(self, result: str) -> None:
        """hit, miss, coalesced, bypass, uncacheable, or error (the cache backend failed)."""
        return None

    def validation_failure(self, field: str) -> None:
        """A request broke a documented constraint on this field."""
        return None


class NullTelemetry(Telemetry):
    """Reports nowhere."""


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "current_call", default=None
)
