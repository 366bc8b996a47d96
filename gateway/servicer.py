"""GenerationService: per call, validate -> resolve the key -> generate -> answer.

No HTTP details here, and nothing about recording: gateway.call_runner starts each call
and records its outcome; this module is the pipeline in between. Every failure is a
GatewayError.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import grpc

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_fingerprint
from gateway.auth import KeyResolver
from gateway.budget_service import get_budget
from gateway.call import (
    SAVED_RESULTS,
    Call,
    CallReport,
    cache_result_name,
    idempotency_key_from,
)
from gateway.call_runner import Answer, CallRunner
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfiguredKeyRejected, GatewayError, InvalidRequest
from gateway.events import NULL_TELEMETRY, CreditsSaved, Telemetry, ValidationFailed
from gateway.generation import GenerationCall, Generator
from gateway.idempotency import REPLAY_METADATA, REPLAY_TRAILER
from gateway.validation import RequestValidator

if TYPE_CHECKING:
    from gateway.budgets import Budgets

_log = logging.getLogger(__name__)

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
REJECTED_KEY_LOG_EVERY = 60.0
REPLAYED = cache_result_name(generation_pb2.CACHE_RESULT_REPLAYED)


class GenerationServicer:
    """Serves CreateGeneration (registered through `rpc_handler`)."""

    def __init__(
        self,
        *,
        runner: CallRunner,
        validator: RequestValidator,
        keys: KeyResolver,
        generator: Generator,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        budgets: Budgets | None = None,
    ) -> None:
        self._budgets = budgets
        self._runner = runner
        self._telemetry = telemetry
        self._validator = validator
        self._keys = keys
        self._generator = generator
        self._clock = clock
        self._rejected_key_logged_at = float("-inf")

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The service's methods, each run by the call runner from the request's bytes."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "CreateGeneration": self._runner.unary(
                    SERVICE_NAME,
                    "CreateGeneration",
                    generation_pb2.GenerationRequest,
                    generation_pb2.GenerationResponse,
                    self._create_generation,
                ),
                "GetBudget": self._runner.unary(
                    SERVICE_NAME,
                    "GetBudget",
                    generation_pb2.GetBudgetRequest,
                    generation_pb2.GetBudgetResponse,
                    functools.partial(get_budget, self._budgets),
                ),
            },
        )

    async def _create_generation(
        self, request: generation_pb2.GenerationRequest, call: Call, report: CallReport
    ) -> Answer:
        self._validate(request, report)
        idempotency_key = idempotency_key_from(call.metadata)
        key = self._keys.resolve(call.metadata)
        report.account = key.fingerprint
        report.outputs_requested = request.num_outputs if request.HasField("num_outputs") else 0
        try:
            generated = await self._generator.generate(
                GenerationCall(
                    request=request,
                    key=key,
                    budget=call.budget,
                    caller=call.caller,
                    cache_control=call.cache_control,
                    trace=call.trace,
                    idempotency_key=idempotency_key,
                    principal=call.principal,
                )
            )
        except ConfiguredKeyRejected:
            self._alarm_rejected_key()
            raise
        except GatewayError as error:
            if error.metadata.get(REPLAY_METADATA) == "true":
                report.cache_result = REPLAYED
            raise
        response = generation_pb2.GenerationResponse()
        response.CopyFrom(generated.response)
        response.cache_result = generated.cache_result
        result = cache_result_name(generated.cache_result)
        if result in SAVED_RESULTS:
            self._telemetry.emit(CreditsSaved(call.caller, response.settings.num_outputs))
        report.model_id = response.settings.model_id or report.model_id
        report.outputs_requested = response.settings.num_outputs or report.outputs_requested
        report.outputs_returned = len(response.outputs)
        report.remaining_credits = response.remaining_credits
        report.cache_result = result
        report.upstream_seconds = generated.upstream_seconds
        trailers = [("x-cache", result)]
        if result == REPLAYED:
            trailers.append((REPLAY_TRAILER, "true"))
        return Answer(response, trailers=tuple(trailers))

    def _alarm_rejected_key(self) -> None:
        """An operator problem every caller sees: say so loudly, at most once a minute."""
        now = self._clock.monotonic()
        if now - self._rejected_key_logged_at >= REJECTED_KEY_LOG_EVERY:
            self._rejected_key_logged_at = now
            configured = self._keys.configured_key()
            _log.error(
                "Stablecog rejects the configured API key; every call fails until it is "
                "replaced (STABLECOG_API_KEY or the key file)",
                extra={"key_fingerprint": account_fingerprint(configured) if configured else None},
            )

    def _validate(self, request: generation_pb2.GenerationRequest, report: CallReport) -> None:
        try:
            self._validator.check(request)
        except InvalidRequest as error:
            fields = tuple(sorted({v.field for v in error.violations}))
            for field in fields:
                self._telemetry.emit(ValidationFailed(field))
            report.invalid_fields = fields
            raise
