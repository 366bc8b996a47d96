"""The gateway's one error hierarchy and the one table that maps it to gRPC status codes.

Every failure a caller can see is a `GatewayError`. Foreign errors (HTTP statuses,
httpx exceptions, validation violations) are converted into it at the boundary where
they occur; the servicer turns it into a `google.rpc.Status` with typed details
(`ErrorInfo` always, `BadRequest` for invalid input, `RetryInfo` where waiting helps).

    GatewayError
    ├── InvalidRequest               INVALID_ARGUMENT    a documented constraint is broken
    ├── MissingCredentials           UNAUTHENTICATED     no configured key, no caller key
    ├── MalformedCredentials         UNAUTHENTICATED     the caller's key cannot be a key
    ├── CallerUnauthenticated        UNAUTHENTICATED     no certificate name / gateway token
    ├── CallerNotPermitted           PERMISSION_DENIED   the budget policy has no place for it
    ├── BudgetExhausted              RESOURCE_EXHAUSTED  a credit budget is spent (QuotaFailure)
    ├── BudgetUnavailable            UNAVAILABLE         budgets cannot be checked: nothing sent
    ├── GatewayDraining              UNAVAILABLE         shutting down; call another replica
    ├── GatewayOverloaded            RESOURCE_EXHAUSTED  too many calls at once; retry shortly
    ├── DeadlineTooShort             INVALID_ARGUMENT    no generation fits the deadline
    ├── CallTimedOut                 DEADLINE_EXCEEDED   the caller's deadline ran out
    ├── IdempotencyKeyReused         FAILED_PRECONDITION the key was used for another request
    ├── IdempotencyStoreUnavailable  UNAVAILABLE         keys cannot be checked: nothing was sent
    ├── GatewayInternal              INTERNAL            a bug in the gateway (details only in logs)
    └── UpstreamError                                    the upstream answered with an error
        ├── UpstreamInvalidArgument  INVALID_ARGUMENT    validation, nsfw_prompt, json_parse_error
        ├── InsufficientCredits      FAILED_PRECONDITION top up the account first
        ├── UpstreamBusy             RESOURCE_EXHAUSTED  429, queue_limit_reached
        ├── CallerKeyRejected        UNAUTHENTICATED     401 for the caller's own key
        ├── ConfiguredKeyRejected    INTERNAL            401 for the gateway's configured key
        ├── UpstreamPermissionDenied PERMISSION_DENIED   403, init_image_not_owned
        ├── WorkerFailed             UNAVAILABLE         generation failed and was refunded
        ├── UpstreamUnreachable      UNAVAILABLE         no connection: nothing was sent
        ├── CircuitOpen              UNAVAILABLE         failing fast for a cool-down: nothing sent
        ├── UpstreamReadFailed       UNAVAILABLE         free call failed: models, credits, upload
        ├── UpstreamInternal         INTERNAL            502/503/504 (may have been charged),
        │                                                any other 5xx or unexpected status
        │   ├── UpstreamTimedOut     INTERNAL            the gateway's upstream timeout ran out
        │   ├── UpstreamConnectionLost INTERNAL          sent, no answer: may have been charged
        │   └── GenerationAbandoned  INTERNAL            stopped mid-call: may have been charged
        └── UpstreamBadResponse      INTERNAL            a 200 that is not the documented shape

Each class carries its default `ErrorInfo.reason`, and `may_have_been_charged`: whether
money may have moved when a call ends with it. `ErrorInfo.domain` says who defined
the reason: `api.stablecog.com` when the reason is the upstream's own error code, the
gateway's domain for every reason the gateway made up (the default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

GATEWAY_DOMAIN = "stablecog-gateway"
UPSTREAM_DOMAIN = "api.stablecog.com"
# The words every error that may have cost credits ends its message with.
MAY_HAVE_BEEN_CHARGED = "the generation may have been charged, so check before retrying"


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule on one request field (the proto field name)."""

    field: str
    description: str


class GatewayError(Exception):
    """Base of every error a caller can receive.

    `reason` is the `ErrorInfo.reason`: the class's `default_reason` unless the raise site
    names another (the upstream's error code in UPPER_SNAKE, with `domain` set to
    UPSTREAM_DOMAIN). `message` is short, safe to show, and never holds a secret or a raw
    upstream body.
    """

    default_reason: ClassVar[str] = "GATEWAY_INTERNAL_ERROR"
    # Did money possibly move? True when the upstream may have charged for the call this
    # error ends (gateway.idempotency then replays the error to a repeat instead of paying
    # again); False when nothing was sent, nothing was charged, or the upstream refunded
    # (a repeat may run again). Every class declares its own (a test checks).
    may_have_been_charged: ClassVar[bool] = True
    # Is the error about the caller rather than the generation (its budget, its
    # permission)? Then the cache's waiters on a flight this caller led do not share it:
    # each tries for itself (gateway.cache, gateway.cache_coordinator).
    concerns_caller: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        domain: str = GATEWAY_DOMAIN,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.domain = domain
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)

    def extra_details(self) -> list[Message]:
        """Typed details of this error beyond ErrorInfo, BadRequest and RetryInfo."""
        return []


class InvalidRequest(GatewayError):
    """The request breaks one or more documented constraints; nothing was sent upstream."""

    default_reason = "INVALID_REQUEST"
    may_have_been_charged = False


class MissingCredentials(GatewayError):
    """No API key is configured and the caller sent no `authorization` metadata."""

    default_reason = "MISSING_API_KEY"
    may_have_been_charged = False


class MalformedCredentials(GatewayError):
    """The caller's `authorization` metadata cannot hold a key (control bytes, spaces...)."""

    default_reason = "MALFORMED_API_KEY"
    may_have_been_charged = False


class CallerUnauthenticated(GatewayError):
    """The call proves no caller identity (gateway.identity); nothing was sent."""

    default_reason = "CALLER_UNAUTHENTICATED"
    may_have_been_charged = False


class CallerNotPermitted(GatewayError):
    """The budget policy lists no budget for this caller and has no default; nothing sent."""

    default_reason = "CALLER_NOT_PERMITTED"
    may_have_been_charged = False
    concerns_caller = True


class BudgetExhausted(GatewayError):
    """The call's cost does not fit one of its caller's budgets (gateway.budgets); nothing
    was sent. `metadata` names the caller, window and limit; `retry_after` is the time
    until that window resets. Its status also carries a google.rpc.QuotaFailure."""

    default_reason = "BUDGET_EXHAUSTED"
    may_have_been_charged = False
    concerns_caller = True

    def extra_details(self) -> list[Message]:
        caller, window = self.metadata.get("caller", ""), self.metadata.get("window", "")
        if not window:  # not raised by the budgets (which always name the window)
            return []
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"caller:{caller}",
            description=self.message,
            quota_metric="stablecog-gateway/credits",
            quota_id=f"credits-per-{window}" if window != "in_flight" else "generations-in-flight",
            quota_dimensions={"caller": caller, "window": window},
        )
        if self.metadata.get("limit", "").isdigit():
            violation.quota_value = int(self.metadata["limit"])
        return [error_details_pb2.QuotaFailure(violations=[violation])]


class BudgetUnavailable(GatewayError):
    """The budget store (Redis) cannot be reached and budgets fail closed; nothing sent."""

    default_reason = "BUDGET_STORE_UNAVAILABLE"
    may_have_been_charged = False


class GatewayOverloaded(GatewayError):
    """The gateway holds as many calls as it may (--max-concurrent-calls); nothing was sent."""

    default_reason = "GATEWAY_OVERLOADED"
    may_have_been_charged = False


class DeadlineTooShort(GatewayError):
    """The caller's deadline is shorter than any generation takes; nothing was sent."""

    default_reason = "DEADLINE_TOO_SHORT"
    may_have_been_charged = False


class GatewayDraining(GatewayError):
    """The gateway is shutting down and takes no new calls."""

    default_reason = "GATEWAY_DRAINING"
    may_have_been_charged = False


class CallTimedOut(GatewayError):
    """The caller's deadline ran out."""

    default_reason = "DEADLINE_EXCEEDED"
    may_have_been_charged = True


class IdempotencyKeyReused(GatewayError):
    """The call's idempotency key was used for another request of this account within the
    window; nothing was sent."""

    default_reason = "IDEMPOTENCY_KEY_REUSED"
    may_have_been_charged = False


class IdempotencyStoreUnavailable(GatewayError):
    """The call carries an idempotency key and the store that remembers keys (Redis) cannot
    be reached: the gateway cannot promise at most once, so nothing was sent."""

    default_reason = "IDEMPOTENCY_STORE_UNAVAILABLE"
    may_have_been_charged = False


class GatewayInternal(GatewayError):
    """An unexpected failure inside the gateway; the log has the details, the caller does not."""

    default_reason = "GATEWAY_INTERNAL_ERROR"
    may_have_been_charged = True


class UpstreamError(GatewayError):
    """The upstream answered with an error (or not at all)."""

    may_have_been_charged = True


class UpstreamInvalidArgument(UpstreamError):
    """The upstream rejected the input (its own validation, moderation, JSON parsing)."""

    default_reason = "UPSTREAM_VALIDATION_FAILED"
    may_have_been_charged = False


class InsufficientCredits(UpstreamError):
    """The account has fewer credits than `num_outputs`; retrying will not help."""

    default_reason = "INSUFFICIENT_CREDITS"
    may_have_been_charged = False


class UpstreamBusy(UpstreamError):
    """Rate limited (429) or the account's queue is full; retry after `retry_after`."""

    default_reason = "RATE_LIMITED"
    may_have_been_charged = False


class CallerKeyRejected(UpstreamError):
    """The upstream rejected the API key the caller sent."""

    default_reason = "UNAUTHORIZED"
    may_have_been_charged = False


class ConfiguredKeyRejected(UpstreamError):
    """The upstream rejected the gateway's configured API key: an operator must fix it."""

    default_reason = "CONFIGURED_API_KEY_REJECTED"
    may_have_been_charged = False


class UpstreamPermissionDenied(UpstreamError):
    """The account is banned, or the init image belongs to another account."""

    default_reason = "FORBIDDEN"
    may_have_been_charged = False


class WorkerFailed(UpstreamError):
    """The upstream's GPU worker failed or timed out; the upstream refunded the credits."""

    default_reason = "WORKER_FAILED"
    may_have_been_charged = False


class CircuitOpen(UpstreamError):
    """The upstream has been failing: calls fail fast for a cool-down; nothing was sent."""

    default_reason = "UPSTREAM_CIRCUIT_OPEN"
    may_have_been_charged = False


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream could be made: nothing was sent, retrying is safe."""

    default_reason = "UPSTREAM_UNREACHABLE"
    may_have_been_charged = False


class UpstreamReadFailed(UpstreamError):
    """A free call (the model catalog, the credit balance, an upload) failed upstream: it
    costs nothing, so retrying is safe."""

    default_reason = "UPSTREAM_READ_FAILED"
    may_have_been_charged = False


class UpstreamInternal(UpstreamError):
    """The upstream failed in a way the caller cannot fix (other 5xx, unexpected status)."""

    default_reason = "UPSTREAM_UNKNOWN_ERROR"
    may_have_been_charged = True


class UpstreamTimedOut(UpstreamInternal):
    """The gateway's own upstream timeout ran out before the caller's deadline: the request
    was sent, so the upstream may be generating and charging. INTERNAL, not
    DEADLINE_EXCEEDED, which client libraries may retry on their own."""

    default_reason = "UPSTREAM_TIMEOUT"
    may_have_been_charged = True


class UpstreamConnectionLost(UpstreamInternal):
    """The request was sent and no answer came: the upstream may have charged for it."""

    default_reason = "UPSTREAM_CONNECTION_LOST"
    may_have_been_charged = True


class GenerationAbandoned(UpstreamInternal):
    """The gateway stopped a generation it had sent (shutdown past the grace period): the
    upstream may still charge for it, so nobody may send it again meanwhile."""

    default_reason = "GENERATION_ABANDONED"
    may_have_been_charged = True


class UpstreamBadResponse(UpstreamError):
    """The upstream answered 200 with a body that is not the documented shape."""

    default_reason = "UPSTREAM_BAD_RESPONSE"
    may_have_been_charged = True


# The one table. tests/gateway/test_errors.py proves every GatewayError subclass is in it.
GRPC_CODES: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    MissingCredentials: grpc.StatusCode.UNAUTHENTICATED,
    MalformedCredentials: grpc.StatusCode.UNAUTHENTICATED,
    CallerUnauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    CallerNotPermitted: grpc.StatusCode.PERMISSION_DENIED,
    BudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BudgetUnavailable: grpc.StatusCode.UNAVAILABLE,
    GatewayDraining: grpc.StatusCode.UNAVAILABLE,
    GatewayOverloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineTooShort: grpc.StatusCode.INVALID_ARGUMENT,
    CallTimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    IdempotencyKeyReused: grpc.StatusCode.FAILED_PRECONDITION,
    IdempotencyStoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    GatewayInternal: grpc.StatusCode.INTERNAL,
    UpstreamInvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
    UpstreamBusy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CallerKeyRejected: grpc.StatusCode.UNAUTHENTICATED,
    ConfiguredKeyRejected: grpc.StatusCode.INTERNAL,
    UpstreamPermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    WorkerFailed: grpc.StatusCode.UNAVAILABLE,
    UpstreamUnreachable: grpc.StatusCode.UNAVAILABLE,
    CircuitOpen: grpc.StatusCode.UNAVAILABLE,
    UpstreamReadFailed: grpc.StatusCode.UNAVAILABLE,
    UpstreamInternal: grpc.StatusCode.INTERNAL,
    UpstreamTimedOut: grpc.StatusCode.INTERNAL,
    UpstreamConnectionLost: grpc.StatusCode.INTERNAL,
    GenerationAbandoned: grpc.StatusCode.INTERNAL,
    UpstreamBadResponse: grpc.StatusCode.INTERNAL,
}


def grpc_code(error: GatewayError) -> grpc.StatusCode:
    """The status code for an error: its class's row in `GRPC_CODES`."""
    return GRPC_CODES[type(error)]


def to_status(error: GatewayError) -> status_pb2.Status:
    """The `google.rpc.Status` a caller receives for `error`, with typed details."""
    code = grpc_code(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=error.domain, metadata=error.metadata
    )
    status.details.add().Pack(info)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    for detail in error.extra_details():
        status.details.add().Pack(detail)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        # At most 32 days: a monthly budget resets within that.
        delay.FromNanoseconds(int(min(max(error.retry_after, 0.0), 32 * 86400.0) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def error_to_dict(error: GatewayError) -> dict[str, Any]:
    """A JSON-ready form of `error`, so another gateway process can raise the same one."""
    return {
        "type": type(error).__name__,
        "message": error.message,
        "reason": error.reason,
        "domain": error.domain,
        "retry_after": error.retry_after,
        "metadata": error.metadata,
        "violations": [[v.field, v.description] for v in error.violations],
    }


def error_from_dict(data: dict[str, Any]) -> GatewayError:
    """The error `error_to_dict` described; an unknown type becomes GatewayInternal.
    Raises ValueError (or TypeError, KeyError) when `data` is not such a description."""
    cls = _BY_NAME.get(str(data.get("type")), GatewayInternal)
    retry_after = data.get("retry_after")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int | float | None):
        raise ValueError("retry_after is not a number")
    return cls(
        str(data.get("message", "")),
        reason=str(data.get("reason") or cls.default_reason),
        domain=str(data.get("domain") or GATEWAY_DOMAIN),
        retry_after=retry_after,
        metadata={str(k): str(v) for k, v in dict(data.get("metadata") or {}).items()},
        violations=[FieldViolation(str(f), str(d)) for f, d in data.get("violations") or ()],
    )


_BY_NAME = {cls.__name__: cls for cls in GRPC_CODES}
