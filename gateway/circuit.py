"""A circuit breaker in front of the upstream: after a run of failures that say the
upstream is down (no connection, a lost connection, a 5xx), calls fail fast with
UNAVAILABLE, nothing sent, for a cool-down; then one probe call decides whether it closes.

Only failures of the upstream itself count; an answer that the upstream gave on purpose
(a 4xx: validation, credits, rate limit) shows it is up. The state is reported as an
event (gateway.metrics exports it).
"""

from __future__ import annotations

import enum

from gateway.clock import Clock
from gateway.errors import (
    CircuitOpen,
    GatewayError,
    GenerationAbandoned,
    UpstreamConnectionLost,
    UpstreamInternal,
    UpstreamUnreachable,
)
from gateway.events import NULL_TELEMETRY, CircuitChanged, Telemetry


class CircuitState(enum.IntEnum):
    """As exported: 0 closed (calls go through), 1 open (they fail fast), 2 half-open."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


def counts_as_down(error: GatewayError) -> bool:
    """True for failures that say the upstream itself is down or broken."""
    if isinstance(error, GenerationAbandoned):
        return False  # our own shutdown, not the upstream
    return isinstance(error, UpstreamUnreachable | UpstreamConnectionLost | UpstreamInternal)


class CircuitBreaker:
    """Consecutive upstream failures open it; a probe after `cool_down` decides."""

    def __init__(
        self,
        *,
        failures: int,
        cool_down: float,
        clock: Clock,
        telemetry: Telemetry = NULL_TELEMETRY,
    ) -> None:
        self._threshold = failures  # 0: never opens
        self._cool_down = cool_down
        self._clock = clock
        self._telemetry = telemetry
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = CircuitState.CLOSED

    def admit(self) -> None:
        """Raise CircuitOpen unless a call may go to the upstream now."""
        if self.state is CircuitState.CLOSED:
            return
        waited = self._clock.monotonic() - self._opened_at
        if self.state is CircuitState.OPEN and waited >= self._cool_down:
            self._set(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True  # this call is the probe
            return
        raise CircuitOpen(
            "Stablecog has been failing; calls fail fast until it recovers, nothing was sent, "
            "retrying later is safe",
            retry_after=max(self._cool_down - waited, 0.5),
        )

    def succeeded(self) -> None:
        """The upstream answered (a success, or an error it gave on purpose)."""
        self._failures = 0
        self._probing = False
        if self.state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failed(self, error: GatewayError) -> None:
        if not counts_as_down(error):
            self.succeeded()
            return
        self._probing = False
        self._failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self._threshold and self._failures >= self._threshold
        ):
            self._opened_at = self._clock.monotonic()
            self._set(CircuitState.OPEN)

    def released(self) -> None:
        """The call ended without telling anything (cancelled): let another one probe."""
        self._probing = False

    def _set(self, state: CircuitState) -> None:
        self.state = state
        self._telemetry.emit(CircuitChanged(state.name.lower(), int(state)))
