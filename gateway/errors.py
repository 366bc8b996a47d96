"""The gateway's one error hierarchy and the one table that maps it to gRPC status codes.

Every failure a caller can see is a `GatewayError`. Foreign errors (HTTP statuses,
httpx exceptions, validation violations) are converted into it at the boundary where
they occur; the servicer turns it into a `google.rpc.Status` with typed details
(`ErrorInfo` always, `BadRequest` for invalid input, `RetryInfo` where waiting helps).

    GatewayError
    ├── InvalidRequest               INVALID_ARGUMENT    a documented constraint is broken
    ├── MissingCredentials           UNAUTHENTICATED     no configured key, no caller key
    ├── MalformedCredentials         UNAUTHENTICATED     the caller's key cannot be a key
    ├── GatewayDraining              UNAVAILABLE         shutting down; call another replica
    ├── GatewayOverloaded            RESOURCE_EXHAUSTED  too many calls at once; retry shortly
    ├── DeadlineTooShort             INVALID_ARGUMENT    no generation fits the deadline
    ├── CallTimedOut                 DEADLINE_EXCEEDED   the caller's deadline ran out
    │   └── UpstreamTimedOut         DEADLINE_EXCEEDED   the gateway's upstream timeout ran out
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
        │   ├── UpstreamConnectionLost INTERNAL          sent, no answer: may have been charged
        │   └── GenerationAbandoned  INTERNAL            stopped mid-call: may have been charged
        └── UpstreamBadResponse      INTERNAL            a 200 that is not the documented shape

Each class carries its default `ErrorInfo.reason`. `ErrorInfo.domain` says who defined
the reason: `api.stablecog.com` when the reason is the upstream's own error code, the
gateway's domain for every reason the gateway made up (the default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

GATEWAY_DOMAIN = "stablecog-gateway"
UPSTREAM_DOMAIN = "api.stablecog.com"


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


class InvalidRequest(GatewayError):
    """The request breaks one or more documented constraints; nothing was sent upstream."""

    default_reason = "INVALID_REQUEST"


class MissingCredentials(GatewayError):
    """No API key is configured and the caller sent no `authorization` metadata."""

    default_reason = "MISSING_API_KEY"


class MalformedCredentials(GatewayError):
    """The caller's `authorization` metadata cannot hold a key (control bytes, spaces...)."""

    default_reason = "MALFORMED_API_KEY"


class GatewayOverloaded(GatewayError):
    """The gateway holds as many calls as it may (--max-concurrent-calls); nothing was sent."""

    default_reason = "GATEWAY_OVERLOADED"


class DeadlineTooShort(GatewayError):
    """The caller's deadline is shorter than any generation takes; nothing was sent."""

    default_reason = "DEADLINE_TOO_SHORT"


class GatewayDraining(GatewayError):
    """The gateway is shutting down and takes no new calls."""

    default_reason = "GATEWAY_DRAINING"


class CallTimedOut(GatewayError):
    """The caller's deadline ran out."""

    default_reason = "DEADLINE_EXCEEDED"


class UpstreamTimedOut(CallTimedOut):
    """The gateway's own upstream timeout ran out before the caller's deadline."""

    default_reason = "UPSTREAM_TIMEOUT"


class GatewayInternal(GatewayError):
    """An unexpected failure inside the gateway; the log has the details, the caller does not."""

    default_reason = "GATEWAY_INTERNAL_ERROR"


class UpstreamError(GatewayError):
    """The upstream answered with an error (or not at all)."""


class UpstreamInvalidArgument(UpstreamError):
    """The upstream rejected the input (its own validation, moderation, JSON parsing)."""

    default_reason = "UPSTREAM_VALIDATION_FAILED"


class InsufficientCredits(UpstreamError):
    """The account has fewer credits than `num_outputs`; retrying will not help."""

    default_reason = "INSUFFICIENT_CREDITS"


class UpstreamBusy(UpstreamError):
    """Rate limited (429) or the account's queue is full; retry after `retry_after`."""

    default_reason = "RATE_LIMITED"


class CallerKeyRejected(UpstreamError):
    """The upstream rejected the API key the caller sent."""

    default_reason = "UNAUTHORIZED"


class ConfiguredKeyRejected(UpstreamError):
    """The upstream rejected the gateway's configured API key: an operator must fix it."""

    default_reason = "CONFIGURED_API_KEY_REJECTED"


class UpstreamPermissionDenied(UpstreamError):
    """The account is banned, or the init image belongs to another account."""

    default_reason = "FORBIDDEN"


class WorkerFailed(UpstreamError):
    """The upstream's GPU worker failed or timed out; the upstream refunded the credits."""

    default_reason = "WORKER_FAILED"


class CircuitOpen(UpstreamError):
    """The upstream has been failing: calls fail fast for a cool-down; nothing was sent."""

    default_reason = "UPSTREAM_CIRCUIT_OPEN"


class UpstreamUnreachable(UpstreamError):
    """No connection to the upstream could be made: nothing was sent, retrying is safe."""

    default_reason = "UPSTREAM_UNREACHABLE"


class UpstreamReadFailed(UpstreamError):
    """A free call (the model catalog, the credit balance, an upload) failed upstream: it
    costs nothing, so retrying is safe."""

    default_reason = "UPSTREAM_READ_FAILED"


class UpstreamInternal(UpstreamError):
    """The upstream failed in a way the caller cannot fix (other 5xx, unexpected status)."""

    default_reason = "UPSTREAM_UNKNOWN_ERROR"


class UpstreamConnectionLost(UpstreamInternal):
    """The request was sent and no answer came: the upstream may have charged for it."""

    default_reason = "UPSTREAM_CONNECTION_LOST"


class GenerationAbandoned(UpstreamInternal):
    """The gateway stopped a generation it had sent (shutdown past the grace period): the
    upstream may still charge for it, so nobody may send it again meanwhile."""

    default_reason = "GENERATION_ABANDONED"


class UpstreamBadResponse(UpstreamError):
    """The upstream answered 200 with a body that is not the documented shape."""

    default_reason = "UPSTREAM_BAD_RESPONSE"


# The one table. tests/gateway/test_errors.py proves every GatewayError subclass is in it.
GRPC_CODES: dict[type[GatewayError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    MissingCredentials: grpc.StatusCode.UNAUTHENTICATED,
    MalformedCredentials: grpc.StatusCode.UNAUTHENTICATED,
    GatewayDraining: grpc.StatusCode.UNAVAILABLE,
    GatewayOverloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineTooShort: grpc.StatusCode.INVALID_ARGUMENT,
    CallTimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    UpstreamTimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
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
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(min(max(error.retry_after, 0.0), 86400.0) * 1e9))
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
