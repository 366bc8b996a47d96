"""Reading the rich google.rpc.Status a gateway error carries."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RichError:
    code: grpc.StatusCode
    message: str
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_delay: float | None = None
    quota: list[error_details_pb2.QuotaFailure.Violation] = field(default_factory=list)


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    found = RichError(code=error.code(), message=error.details() or "")
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        assert status.code == error.code().value[0]
        assert status.message == found.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                found.info = error_details_pb2.ErrorInfo()
                detail.Unpack(found.info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                found.violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                found.quota = list(quota.violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                found.retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
    return found
