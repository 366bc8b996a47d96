"""The one error table is complete and every error leaves as a rich google.rpc.Status."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from gateway import errors
from gateway.errors import GRPC_CODES, GatewayError, UpstreamError, to_status
from tests.fixtures import all_subclasses


def test_every_error_class_has_exactly_one_row() -> None:
    concrete = all_subclasses(GatewayError) - {UpstreamError}
    assert set(GRPC_CODES) == concrete, "add the missing classes to errors.GRPC_CODES"


def test_every_error_in_the_module_is_in_the_hierarchy() -> None:
    exported = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    }
    assert exported <= all_subclasses(GatewayError) | {GatewayError}


@pytest.mark.parametrize("cls", sorted(GRPC_CODES, key=lambda c: c.__name__))
def test_status_carries_code_message_and_error_info(cls: type[GatewayError]) -> None:
    error = cls("something happened", reason="SOME_REASON", metadata={"k": "v"})
    status = to_status(error)
    assert status.code == getattr(code_pb2, GRPC_CODES[cls].name)
    assert status.message == "something happened"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "SOME_REASON"
    assert info.domain in (errors.GATEWAY_DOMAIN, errors.UPSTREAM_DOMAIN)
    assert dict(info.metadata) == {"k": "v"}
    assert len(status.details) == 1


def test_retry_info_and_bad_request_details() -> None:
    error = errors.InvalidRequest(
        "bad",
        reason="INVALID_REQUEST",
        violations=[errors.FieldViolation("width", "width too big")],
        retry_after=1.5,
    )
    status = to_status(error)
    bad, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("width", "width too big")]
    assert status.details[2].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000


def test_codes_follow_the_contract() -> None:
    # The whole table as the issue and README state it, so a silent edit fails here.
    assert {cls.__name__: code.name for cls, code in GRPC_CODES.items()} == {
        "InvalidRequest": "INVALID_ARGUMENT",
        "MissingCredentials": "UNAUTHENTICATED",
        "MalformedCredentials": "UNAUTHENTICATED",
        "CallerUnauthenticated": "UNAUTHENTICATED",
        "CallerNotPermitted": "PERMISSION_DENIED",
        "BudgetExhausted": "RESOURCE_EXHAUSTED",
        "BudgetUnavailable": "UNAVAILABLE",
        "GatewayDraining": "UNAVAILABLE",
        "GatewayOverloaded": "RESOURCE_EXHAUSTED",
        "DeadlineTooShort": "INVALID_ARGUMENT",
        "CallTimedOut": "DEADLINE_EXCEEDED",
        "GatewayInternal": "INTERNAL",
        "UpstreamInvalidArgument": "INVALID_ARGUMENT",
        "InsufficientCredits": "FAILED_PRECONDITION",
        "UpstreamBusy": "RESOURCE_EXHAUSTED",
        "CallerKeyRejected": "UNAUTHENTICATED",
        "ConfiguredKeyRejected": "INTERNAL",
        "UpstreamPermissionDenied": "PERMISSION_DENIED",
        "WorkerFailed": "UNAVAILABLE",
        "UpstreamInternal": "INTERNAL",
        "UpstreamBadResponse": "INTERNAL",
        "UpstreamTimedOut": "INTERNAL",
        "UpstreamUnreachable": "UNAVAILABLE",
        "CircuitOpen": "UNAVAILABLE",
        "UpstreamReadFailed": "UNAVAILABLE",
        "UpstreamConnectionLost": "INTERNAL",
        "GenerationAbandoned": "INTERNAL",
        "IdempotencyKeyReused": "FAILED_PRECONDITION",
        "IdempotencyStoreUnavailable": "UNAVAILABLE",
    }


def test_every_error_class_says_whether_money_may_have_moved() -> None:
    # Declared in each class's own body, never inherited by accident: gateway.idempotency
    # replays the errors that say True and lets a repeat run again after the others.
    for cls in all_subclasses(GatewayError) | {GatewayError}:
        assert isinstance(vars(cls).get("may_have_been_charged"), bool), cls.__name__


def test_unavailable_only_when_no_money_moved() -> None:
    # The house rule: a client may retry UNAVAILABLE on its own, so it never means "may
    # have been charged".
    for cls, code in GRPC_CODES.items():
        if code.name == "UNAVAILABLE":
            assert cls.may_have_been_charged is False, cls.__name__
    charged = {cls.__name__ for cls in GRPC_CODES if cls.may_have_been_charged}
    assert charged == {
        "CallTimedOut",
        "UpstreamTimedOut",
        "GatewayInternal",
        "UpstreamInternal",
        "UpstreamConnectionLost",
        "GenerationAbandoned",
        "UpstreamBadResponse",
    }


@pytest.mark.parametrize("cls", sorted(GRPC_CODES, key=lambda c: c.__name__))
def test_each_class_carries_its_own_default_reason_in_the_gateway_domain(
    cls: type[GatewayError],
) -> None:
    error = cls("m")
    assert error.reason == cls.default_reason
    assert error.domain == errors.GATEWAY_DOMAIN


def test_default_reasons_are_distinct() -> None:
    reasons = [cls.default_reason for cls in GRPC_CODES]
    assert len(reasons) == len(set(reasons)), "two classes share a default reason"


@pytest.mark.parametrize("cls", sorted(GRPC_CODES, key=lambda c: c.__name__))
def test_errors_survive_the_trip_to_another_process(cls: type[GatewayError]) -> None:
    error = cls(
        "m",
        reason="R",
        retry_after=2.5,
        metadata={"a": "b"},
        violations=[errors.FieldViolation("width", "too wide")],
    )
    again = errors.error_from_dict(errors.error_to_dict(error))
    assert type(again) is cls
    assert to_status(again) == to_status(error)
