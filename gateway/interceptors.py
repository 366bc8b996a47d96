"""Per-call metrics and the access log: a grpc.aio server interceptor.

For every unary call to our own services (health checks and reflection are left
alone) it makes a `CallRecord` current, sends the request id as initial metadata (so a
caller gets it on errors too), times the call, settles the final status code, updates
the grpc_server_* metrics and logs one JSON line on the `gateway.access` logger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.calls import CallRecord, current_call
from gateway.metrics import GatewayMetrics, sanitize_label
from gateway.servicer import text_metadata

access_log = logging.getLogger("gateway.access")

# Services whose calls are not counted or logged (as go-grpc-prometheus users expect).
EXCLUDED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_EXCLUDED_PREFIXES = tuple(f"/{service}/" for service in EXCLUDED_SERVICES)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SAVED = frozenset({"hit", "coalesced"})
PROMPT_DIGEST_CHARS = 16
DEADLINE_SLACK_SECONDS = 0.1

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def prompt_digest(prompt: str) -> str:
    """A short digest of a prompt: enough to correlate calls, not to read the prompt."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:PROMPT_DIGEST_CHARS]


def request_id_from(value: str | None) -> str:
    """The caller's `x-request-id` when it is a sane token, else a new random id."""
    if value is not None and _REQUEST_ID.match(value):
        return value
    return uuid.uuid4().hex


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each unary handler of our services with metrics and one access-log line."""

    def __init__(self, metrics: GatewayMetrics, *, log_prompts: bool = False) -> None:
        self._metrics = metrics
        self._log_prompts = log_prompts
        # Wrapped handlers by method; the server hands out the same handler each call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Unknown methods (UNIMPLEMENTED) are not counted: their names are unbounded.
        if handler is None or method.startswith(_EXCLUDED_PREFIXES):
            return handler
        if handler.request_streaming or handler.response_streaming:
            return handler  # the gateway has unary methods only
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, behavior: Behavior) -> Behavior:
        service, _, method = full_method.lstrip("/").partition("/")
        metrics = self._metrics
        log_prompts = self._log_prompts

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = text_metadata(context)
            raw_caller = metadata.get("x-caller")
            record = CallRecord(
                method=method,
                request_id=request_id_from(metadata.get("x-request-id")),
                caller=metrics.caller_label(raw_caller),
            )
            if raw_caller is not None and sanitize_label(raw_caller) != record.caller:
                # Counted as `other` (past --max-callers): the log still says who it was.
                record.extra["caller_raw"] = sanitize_label(raw_caller)
            prompt = getattr(request, "prompt", None)
            if isinstance(prompt, str) and prompt:
                record.prompt_digest = prompt_digest(prompt)
                if log_prompts:
                    record.prompt = prompt
            token = current_call.set(record)
            metrics.started(service, method)
            code = "UNKNOWN"
            try:
                await context.send_initial_metadata((("x-request-id", record.request_id),))
                response = await behavior(request, context)
                code = _code_name(context.code()) or "OK"
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                remaining = context.time_remaining()
                # The caller's own deadline timer fires a little before ours (ours starts
                # when its header arrives), and its cancel can reach us first.
                if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS:
                    code = "DEADLINE_EXCEEDED"
                raise
            except BaseException:
                # context.abort raises AbortError after setting the code; anything else
                # leaves as UNKNOWN, as grpc.aio answers it.
                code = _code_name(context.code()) or "UNKNOWN"
                raise
            finally:
                seconds = time.perf_counter() - started
                metrics.handled(service, method, code, seconds)
                current_call.reset(token)
                record.code = code
                _log_call(record, seconds)

        return observed


def _code_name(code: object) -> str | None:
    """The name of the status code a handler set: grpc.aio gives a StatusCode, an int or None."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate.name
    return None


def _log_call(record: CallRecord, seconds: float) -> None:
    level = logging.ERROR if record.code in ("UNKNOWN", "INTERNAL", "DATA_LOSS") else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    entry: dict[str, object] = {
        "request_id": record.request_id,
        "method": record.method,
        "caller": record.caller,
        "grpc_code": record.code,
        "latency_seconds": round(seconds, 6),
        "upstream_seconds": (
            None if record.upstream_seconds is None else round(record.upstream_seconds, 6)
        ),
        "cache_result": record.cache_result,
        "num_outputs": record.outputs_requested,
        "outputs_returned": record.outputs_returned,
    }
    if record.code == "OK":
        saved = record.cache_result in _SAVED
        entry["credits_spent"] = 0 if saved else record.outputs_requested
        entry["credits_saved"] = record.outputs_requested if saved else 0
    if record.remaining_credits is not None:
        entry["credits_remaining"] = record.remaining_credits
    if record.model_id:
        entry["model_id"] = record.model_id
    if record.account:
        entry["account"] = record.account
    if record.error_reason:
        entry["error_reason"] = record.error_reason
    if record.invalid_fields:
        entry["invalid_fields"] = list(record.invalid_fields)
    if record.prompt_digest:
        entry["prompt_sha256"] = record.prompt_digest
    if record.prompt is not None:
        entry["prompt"] = record.prompt
    entry.update(record.extra)
    access_log.log(level, "call", extra=entry)
