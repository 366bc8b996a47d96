"""Pure mapping from an upstream HTTP error answer to the gateway's error hierarchy.

Reads the status, the JSON `error` code (429 answers in plain text) and `Retry-After`.
The resulting messages quote at most the upstream's short `error` string, never the
raw body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from gateway.errors import (
    GATEWAY_DOMAIN,
    MAY_HAVE_BEEN_CHARGED,
    UPSTREAM_DOMAIN,
    CallerKeyRejected,
    ConfiguredKeyRejected,
    FieldViolation,
    InsufficientCredits,
    UpstreamBusy,
    UpstreamError,
    UpstreamInternal,
    UpstreamInvalidArgument,
    UpstreamPermissionDenied,
    WorkerFailed,
)

# What the upstream says when its own infrastructure fails (misspelling is theirs).
_UNKNOWN_ERRORS = frozenset({"An unknown error has occured", "unknown_error"})
# Worker failures are refunded upstream; sc-worker may send codes beyond these.
WORKER_ERRORS = frozenset(
    {
        "TIMEOUT",
        "runpod_failed",
        "no_outputs",
        "runpod_endpoint_not_set",
        "error_decoding_runpod_response",
    }
)
MAX_RETRY_SECONDS = 3600.0
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_DEFAULT_RETRY_SECONDS = {429: 1.0, "queue_limit_reached": 5.0, "unavailable": 1.0}

# Upstream validation messages (or codes) -> the request field they are about.
_FIELD_BY_PREFIX = (
    ("Height", "height"),
    ("Width", "width"),
    ("Guidance scale", "guidance_scale"),
    ("Inference steps", "inference_steps"),
    ("Pick fewer inference steps", "inference_steps"),
    ("Number of outputs", "num_outputs"),
    ("invalid_model_id", "model_id"),
    ("invalid_scheduler_id", "scheduler_id"),
    ("invalid_model_or_scheduler", "model_id"),
    ("invalid_init_image_url", "init_image_url"),
    ("invalid_image_url", "init_image_url"),
    ("image_url_width_height_error", "init_image_url"),
    ("init_image_not_found", "init_image_url"),
    ("nsfw_prompt", "prompt"),
)
# The same for the upload route (docs/upstream-api.md#upload-endpoint), and for the upscale
# route, whose input-related codes are not recorded (the emulator's are assumed ones).
UPLOAD_FIELDS = (
    ("parse_error", "file"),
    ("invalid_file", "file"),
    ("invalid_content_type", "file"),
)
UPSCALE_FIELDS = (
    ("invalid_model_id", "model_id"),
    ("invalid_input", "input"),
    ("output_not_found", "input"),
    ("image_url_width_height_error", "input"),
    ("invalid_image_url", "input"),
)
GENERATION_FIELDS = _FIELD_BY_PREFIX


def error_code(body: bytes) -> str | None:
    """The `error` string of a JSON error body, or None when there is none."""
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    return None


def has_settings(body: bytes) -> bool:
    try:
        payload: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and isinstance(payload.get("settings"), dict)


@dataclass(frozen=True)
class Reason:
    """An ErrorInfo reason and its domain: the upstream's when the reason is its own code."""

    reason: str | None  # None: the error class's default reason
    domain: str = GATEWAY_DOMAIN


def reason_for(code: str | None) -> Reason:
    """The upstream's code in UPPER_SNAKE (its domain) when it is a code, else the
    error class's default (the gateway's domain)."""
    if code and _CODE.match(code):
        return Reason(code.upper(), UPSTREAM_DOMAIN)
    return Reason(None)


def _status_reason(status: int) -> str:
    return f"UPSTREAM_HTTP_{status}"


# Reasons this module can give whatever the upstream says (initialised in metrics).
STATIC_REASONS = (
    "QUEUE_LIMIT_REACHED",
    "INSUFFICIENT_CREDITS",
    "INIT_IMAGE_NOT_OWNED",
    *(_status_reason(status) for status in (500, 502, 503, 504)),
    *(code.upper() for code in sorted(WORKER_ERRORS)),
)


def retry_after_seconds(headers: Mapping[str, str], default: float) -> float:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date), else `default`,
    clamped to 0..MAX_RETRY_SECONDS so a hostile or broken header cannot overflow."""
    raw = headers.get("retry-after")
    if raw is None:
        return default
    raw = raw.strip()
    if raw.isdigit():
        return min(float(raw), MAX_RETRY_SECONDS)
    try:
        when = parsedate_to_datetime(raw)
        seconds = (when - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return default
    return min(max(0.0, seconds), MAX_RETRY_SECONDS)


def _safe(text: str) -> str:
    """An upstream message fit to quote: one line, bounded."""
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _field_for(code: str, fields: Sequence[tuple[str, str]]) -> str | None:
    for prefix, field in fields:
        if code.startswith(prefix):
            return field
    return None


def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    configured_key: bool,
    fields: Sequence[tuple[str, str]] = GENERATION_FIELDS,
) -> UpstreamError:
    """The gateway error for an upstream answer whose status is not 200; `fields` names
    the request field each of the route's 400 codes is about."""
    code = error_code(body)
    meta = {"upstream_status": str(status)}
    if code is not None:
        meta["upstream_error"] = _safe(code)
    upstream = reason_for(code)

    if status == 400:
        if code == "insufficient_credits":
            return InsufficientCredits(
                "the Stablecog account has too few credits for this generation; "
                "top it up before retrying",
                reason="INSUFFICIENT_CREDITS",
                domain=UPSTREAM_DOMAIN,
                metadata=meta,
            )
        if code == "queue_limit_reached":
            return UpstreamBusy(
                "the Stablecog account's generation queue is full; retry later",
                reason="QUEUE_LIMIT_REACHED",
                domain=UPSTREAM_DOMAIN,
                metadata=meta,
                retry_after=retry_after_seconds(headers, _DEFAULT_RETRY_SECONDS[code]),
            )
        text = _safe(code) if code else "malformed request"
        field = _field_for(code or "", fields)
        return UpstreamInvalidArgument(
            f"Stablecog rejected the request: {text}",
            reason=upstream.reason,
            domain=upstream.domain,
            metadata=meta,
            violations=[FieldViolation(field, text)] if field else (),
        )
    if status == 429:
        return UpstreamBusy(
            "Stablecog's rate limit was reached; retry after the delay",
            metadata=meta,
            retry_after=retry_after_seconds(headers, _DEFAULT_RETRY_SECONDS[429]),
        )
    if status == 401:
        if code == "init_image_not_owned":
            return UpstreamPermissionDenied(
                "the init image belongs to another Stablecog account",
                reason="INIT_IMAGE_NOT_OWNED",
                domain=UPSTREAM_DOMAIN,
                metadata=meta,
            )
        if configured_key:
            return ConfiguredKeyRejected(
                "Stablecog rejected the gateway's configured API key; "
                "the gateway's operator must replace it",
                metadata=meta,
            )
        return CallerKeyRejected(
            "Stablecog rejected the API key sent in `authorization` metadata",
            reason=upstream.reason,
            domain=upstream.domain,
            metadata=meta,
        )
    if status == 403:
        return UpstreamPermissionDenied(
            f"Stablecog refused the account: {_safe(code) if code else 'forbidden'}",
            reason=upstream.reason,
            domain=upstream.domain,
            metadata=meta,
        )
    if (
        status == 500
        and code is not None
        and code not in _UNKNOWN_ERRORS
        and (code in WORKER_ERRORS or has_settings(body))
    ):
        return WorkerFailed(
            f"the Stablecog worker failed ({_safe(code)}); the upstream refunded "
            "the credits, retrying may succeed",
            reason=upstream.reason,
            domain=upstream.domain,
            metadata=meta,
            retry_after=retry_after_seconds(headers, _DEFAULT_RETRY_SECONDS["unavailable"]),
        )
    if status in (502, 503, 504):
        # From whatever stands in front of the upstream, after the body was sent: the
        # upstream may have started (and charged for) the generation. Not UNAVAILABLE, so
        # no client retries it on its own.
        return UpstreamInternal(
            f"Stablecog's front end answered HTTP {status}; the generation may have been "
            "charged, so check before retrying",
            reason=_status_reason(status),
            metadata=meta,
        )
    # Any other answer came after the request was sent: the upstream may have charged.
    if code in _UNKNOWN_ERRORS:
        return UpstreamInternal(
            f"Stablecog failed with HTTP {status}; {MAY_HAVE_BEEN_CHARGED}", metadata=meta
        )
    return UpstreamInternal(
        f"Stablecog failed with HTTP {status}"
        + (f" ({_safe(code)})" if code else "")
        + f"; {MAY_HAVE_BEEN_CHARGED}",
        reason=upstream.reason or _status_reason(status),
        domain=upstream.domain,
        metadata=meta,
    )
