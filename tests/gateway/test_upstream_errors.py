"""Each upstream answer maps to the precise error of the contract's table (pure)."""

from __future__ import annotations

import json

import grpc
import pytest

from gateway.errors import grpc_code
from gateway.upstream_errors import error_from_response, retry_after_seconds

SETTINGS = {"model_id": "m", "scheduler_id": "s", "width": 512, "height": 512}


def body(error: str, settings: bool = False) -> bytes:
    payload: dict[str, object] = {"error": error}
    if settings:
        payload["settings"] = SETTINGS
    return json.dumps(payload).encode()


ROWS = [
    # status, body, headers, configured_key, code, reason
    (
        400,
        body("Height is too large, max is: 1536"),
        {},
        True,
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPSTREAM_VALIDATION_FAILED",
    ),
    (400, body("nsfw_prompt", True), {}, True, grpc.StatusCode.INVALID_ARGUMENT, "NSFW_PROMPT"),
    (400, body("json_parse_error"), {}, True, grpc.StatusCode.INVALID_ARGUMENT, "JSON_PARSE_ERROR"),
    (400, body("invalid_model_id"), {}, True, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_ID"),
    (
        400,
        body("insufficient_credits", True),
        {},
        True,
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    ),
    (
        400,
        body("queue_limit_reached", True),
        {},
        True,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_LIMIT_REACHED",
    ),
    (
        429,
        b"Too Many Requests",
        {"retry-after": "1"},
        True,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    ),
    (401, body("Unauthorized"), {}, False, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHORIZED"),
    (401, body("Unauthorized"), {}, True, grpc.StatusCode.INTERNAL, "CONFIGURED_API_KEY_REJECTED"),
    (
        401,
        body("init_image_not_owned", True),
        {},
        True,
        grpc.StatusCode.PERMISSION_DENIED,
        "INIT_IMAGE_NOT_OWNED",
    ),
    (403, body("user_banned"), {}, True, grpc.StatusCode.PERMISSION_DENIED, "USER_BANNED"),
    (500, body("TIMEOUT", True), {}, True, grpc.StatusCode.UNAVAILABLE, "TIMEOUT"),
    (500, body("runpod_failed", True), {}, True, grpc.StatusCode.UNAVAILABLE, "RUNPOD_FAILED"),
    (500, body("no_outputs"), {}, True, grpc.StatusCode.UNAVAILABLE, "NO_OUTPUTS"),
    (
        500,
        body("some_new_worker_error", True),
        {},
        True,
        grpc.StatusCode.UNAVAILABLE,
        "SOME_NEW_WORKER_ERROR",
    ),
    (
        500,
        body("An unknown error has occured"),
        {},
        True,
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_UNKNOWN_ERROR",
    ),
    (
        500,
        body("An unknown error has occured", True),
        {},
        True,
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_UNKNOWN_ERROR",
    ),
    (500, b"Internal Server Error", {}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_500"),
    (501, b"", {}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_501"),
    (502, b"<html>bad gateway</html>", {}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_502"),
    (503, b"", {"retry-after": "7"}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_503"),
    (504, b"", {}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_504"),
    (404, b"404 page not found", {}, True, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_404"),
]


@pytest.mark.parametrize(("status", "raw", "headers", "configured", "code", "reason"), ROWS)
def test_row(
    status: int,
    raw: bytes,
    headers: dict[str, str],
    configured: bool,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    error = error_from_response(status, raw, headers, configured_key=configured)
    assert grpc_code(error) is code
    assert error.reason == reason
    assert error.metadata["upstream_status"] == str(status)
    # Never a raw body in a message.
    assert "<html>" not in error.message
    assert "settings" not in error.message


def test_retry_info_where_waiting_helps() -> None:
    assert (
        error_from_response(
            429, b"Too Many Requests", {"retry-after": "3"}, configured_key=True
        ).retry_after
        == 3.0
    )
    assert (
        error_from_response(429, b"Too Many Requests", {}, configured_key=True).retry_after == 1.0
    )
    assert (
        error_from_response(400, body("queue_limit_reached"), {}, configured_key=True).retry_after
        == 5.0
    )
    # A 503 may follow a charge: no RetryInfo invites a retry, whatever Retry-After says.
    assert (
        error_from_response(503, b"", {"retry-after": "7"}, configured_key=True).retry_after is None
    )
    assert "may have been charged" in (
        error_from_response(502, b"", {}, configured_key=True).message
    )
    assert (
        error_from_response(400, body("insufficient_credits"), {}, configured_key=True).retry_after
        is None
    )


def test_upstream_validation_messages_name_the_field() -> None:
    error = error_from_response(
        400, body("Width is too small, min is: 256"), {}, configured_key=True
    )
    assert [v.field for v in error.violations] == ["width"]
    error = error_from_response(
        400,
        body("Pick fewer inference steps or smaller dimensions: 1536 - 1536 - 30"),
        {},
        configured_key=True,
    )
    assert [v.field for v in error.violations] == ["inference_steps"]


def test_retry_after_http_date_and_garbage() -> None:
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 2.0) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, 2.0) == 2.0


def test_long_upstream_messages_are_bounded() -> None:
    error = error_from_response(400, body("x" * 5000), {}, configured_key=True)
    assert len(error.message) < 300
