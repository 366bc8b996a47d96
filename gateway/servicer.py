"""GenerationService: per call, validate -> resolve the key -> generate -> answer.

No HTTP details here. Every failure is a GatewayError, which leaves as a
`google.rpc.Status` with typed details. The servicer also counts calls in flight so
the application can drain them on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NoReturn

import grpc
from grpc_status import rpc_status

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.auth import KeyResolver
from gateway.calls import (
    CallRecord,
    NullTelemetry,
    Telemetry,
    account_fingerprint,
    cache_result_name,
    current_call,
)
from gateway.errors import (
    ConfiguredKeyRejected,
    GatewayDraining,
    GatewayError,
    GatewayInternal,
    InvalidRequest,
    grpc_code,
    to_status,
)
from gateway.generation import CacheControl, GenerationCall, Generator
from gateway.upstream import CallBudget
from gateway.validation import RequestValidator

_log = logging.getLogger(__name__)

_SAVED = (
    generation_pb2.CacheResult.CACHE_RESULT_HIT,
    generation_pb2.CacheResult.CACHE_RESULT_COALESCED,
)


class InFlight:
    """Counts calls in flight; `wait_idle` returns when none are left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """Serves CreateGeneration."""

    def __init__(
        self,
        *,
        validator: RequestValidator,
        keys: KeyResolver,
        generator: Generator,
        upstream_timeout: float,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or NullTelemetry()
        self._validator = validator
        self._keys = keys
        self._generator = generator
        self._upstream_timeout = upstream_timeout
        self.in_flight = InFlight()
        self._rejected_key_logged_at = float("-inf")
        self.draining = False

    async def CreateGeneration(
        self,
        request: generation_pb2.GenerationRequest,
        context: grpc.aio.ServicerContext[
            generation_pb2.GenerationRequest, generation_pb2.GenerationResponse
        ],
    ) -> generation_pb2.GenerationResponse:
        record = current_call.get()
        with self.in_flight:
            try:
                if self.draining:
                    raise GatewayDraining(
                        "the gateway is shutting down; retry on another replica",
                        reason="GATEWAY_DRAINING",
                        retry_after=1.0,
                    )
                self._validate(request)
                metadata = text_metadata(context)
                key = self._keys.resolve(metadata)
                if record is not None:
                    record.account = account_fingerprint(key.value)
                    record.outputs_requested = (
                        request.num_outputs if request.HasField("num_outputs") else 0
                    )
                call = GenerationCall(
                    request=request,
                    key=key,
                    budget=CallBudget.of(self._upstream_timeout, context.time_remaining()),
                    cache_control=CacheControl.from_header(metadata.get("cache-control")),
                )
                generated = await self._generator.generate(call)
            except GatewayError as error:
                if isinstance(error, ConfiguredKeyRejected):
                    self._alarm_rejected_key()
                await _abort(context, record, error)
            except Exception as exc:  # a bug: never let it leave as UNKNOWN with internals
                _log.error(
                    "unexpected failure in CreateGeneration",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:500]},
                )
                await _abort(
                    context,
                    record,
                    GatewayInternal(
                        "the gateway failed unexpectedly; the failure is logged",
                        reason="GATEWAY_INTERNAL_ERROR",
                    ),
                )
            response = generation_pb2.GenerationResponse()
            response.CopyFrom(generated.response)
            response.cache_result = generated.cache_result
            if generated.cache_result in _SAVED:
                self._telemetry.credits_saved(
                    caller=record.caller if record else "unknown",
                    credits=response.settings.num_outputs,
                )
            if record is not None:
                record.complete(response, generated.cache_result, generated.upstream_seconds)
            context.set_trailing_metadata((("x-cache", cache_result_name(generated.cache_result)),))
            return response

    def _alarm_rejected_key(self) -> None:
        """An operator problem every caller sees: say so loudly, at most once a minute."""
        now = time.monotonic()
        if now - self._rejected_key_logged_at >= 60.0:
            self._rejected_key_logged_at = now
            configured = self._keys.configured_key()
            _log.error(
                "Stablecog rejects the configured API key; every call fails until it is "
                "replaced (STABLECOG_API_KEY or the key file)",
                extra={"key_fingerprint": account_fingerprint(configured) if configured else None},
            )

    def _validate(self, request: generation_pb2.GenerationRequest) -> None:
        try:
            self._validator.check(request)
        except InvalidRequest as error:
            fields = tuple(sorted({v.field for v in error.violations}))
            for field in fields:
                self._telemetry.validation_failure(field)
            record = current_call.get()
            if record is not None:
                record.invalid_fields = fields
            raise


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], record: CallRecord | None, error: GatewayError
) -> NoReturn:
    if record is not None:
        record.code = grpc_code(error).name
        record.error_reason = error.reason
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)


def text_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (binary `-bin` values are skipped)."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found
