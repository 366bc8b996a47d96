"""Safe retries of an upstream generation: only when the upstream provably did not act.

Retried: no connection could be made (nothing was sent), 429 and `queue_limit_reached`
(the upstream refused before starting; its `Retry-After` is honoured), and, when
--retry-refunded is on, worker failures the upstream refunds. Never an error raised once
the request may have been written (a lost connection, a 5xx from the front end, a
timeout): those may have been charged. Full-jitter exponential backoff, a bounded number
of attempts, and never past the caller's deadline: when the next wait does not fit, the
last error is answered at once (with its RetryInfo).

Hand-written rather than stamina or tenacity: the decision needs the error's money
meaning and the call's remaining deadline, and the waits must run on the injected clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.errors import GatewayError, UpstreamBusy, UpstreamUnreachable, WorkerFailed


@dataclass(frozen=True)
class RetryPolicy:
    """How a generation is retried; `attempts` counts the first try (1: never retry)."""

    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    retry_refunded: bool = True

    def retryable(self, error: GatewayError) -> bool:
        if isinstance(error, UpstreamUnreachable | UpstreamBusy):
            return True
        return self.retry_refunded and isinstance(error, WorkerFailed)

    def delay(self, attempt: int, error: GatewayError, rng: random.Random) -> float:
        """Seconds to wait before try `attempt + 1`: full jitter, at least the upstream's
        own `Retry-After` when it refused for load."""
        jitter = rng.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        if isinstance(error, UpstreamBusy) and error.retry_after is not None:
            return max(jitter, error.retry_after)
        return jitter
