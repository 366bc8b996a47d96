"""UploadImage and CreateUpscale: the image RPCs beyond generation.

Registered on GenerationService next to CreateGeneration (gateway.servicer) and run by the
call runner like it, so each call gets the same metrics, access log and error details.

UploadImage is free: its size and type are checked here before anything is sent, and any
failure once the file was sent is UNAVAILABLE (UPLOAD_FAILED), since a retry can cost
nothing; only the upstream's own refusals (a bad file, no credits, the key) keep their rows.

CreateUpscale costs one credit and follows the generation's money rules: validated before
anything is sent, then handed to the upscaler layers (gateway.upscale): idempotency keys,
the upscale cache that coalesces identical calls, the caller's credit budget, and the
upstream call with the generation's error table and safe retries.
"""

from __future__ import annotations

import random

import grpc

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.auth import KeyResolver
from gateway.call import (
    SAVED_RESULTS,
    Call,
    CallBudget,
    CallReport,
    cache_result_name,
    idempotency_key_from,
)
from gateway.call_runner import Answer, CallRunner
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    FieldViolation,
    GatewayError,
    InsufficientCredits,
    InvalidRequest,
    UpstreamBadResponse,
    UpstreamInternal,
    UpstreamReadFailed,
)
from gateway.events import (
    NULL_TELEMETRY,
    CreditsSaved,
    Telemetry,
    UpstreamFailed,
    ValidationFailed,
)
from gateway.idempotency import REPLAY_METADATA, REPLAY_TRAILER
from gateway.media import (
    EXTENSIONS,
    MAX_UPLOAD_REQUEST_BYTES,
    sniff_content_type,
    upload_from_body,
)
from gateway.retries import RetryPolicy
from gateway.servicer import REPLAYED, SERVICE_NAME
from gateway.upscale import UpscaleCall, Upscaler
from gateway.upstream import StablecogClient, UpstreamAnswer
from gateway.upstream_calls import with_retries
from gateway.upstream_defaults import UPSCALE_CREDITS
from gateway.validation import RequestValidator

UPLOAD_FAILED = "UPLOAD_FAILED"


class MediaServicer:
    """Serves UploadImage and CreateUpscale (registered through `rpc_handler`)."""

    def __init__(
        self,
        *,
        runner: CallRunner,
        validator: RequestValidator,
        keys: KeyResolver,
        client: StablecogClient,
        upscaler: Upscaler,
        retries: RetryPolicy | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._runner = runner
        self._validator = validator
        self._keys = keys
        self._client = client
        self._upscaler = upscaler
        self._retries = retries or RetryPolicy()
        self._telemetry = telemetry
        self._clock = clock
        self._rng = rng or random.Random()

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The methods, each run by the call runner from the request's bytes."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "UploadImage": self._runner.unary(
                    SERVICE_NAME,
                    "UploadImage",
                    generation_pb2.UploadImageRequest,
                    generation_pb2.UploadImageResponse,
                    self._upload_image,
                    max_request_bytes=MAX_UPLOAD_REQUEST_BYTES,
                ),
                "CreateUpscale": self._runner.unary(
                    SERVICE_NAME,
                    "CreateUpscale",
                    generation_pb2.CreateUpscaleRequest,
                    generation_pb2.CreateUpscaleResponse,
                    self._create_upscale,
                ),
            },
        )

    # --- UploadImage ---

    async def _upload_image(
        self, request: generation_pb2.UploadImageRequest, call: Call, report: CallReport
    ) -> Answer:
        found = self._validator.violations(request)
        content_type = sniff_content_type(request.file) if not found else None
        if not found and content_type is None:
            found.append(
                FieldViolation(
                    "file",
                    "file is not a JPEG, PNG or WebP image (recognised by its first bytes)",
                )
            )
        self._reject(found, report)
        assert content_type is not None
        key = self._keys.resolve(call.metadata)
        report.account = key.fingerprint
        filename = f"upload.{EXTENSIONS[content_type]}"

        async def attempt(budget: CallBudget) -> UpstreamAnswer:
            return await self._client.upload_image(
                request.file, filename, content_type, key, budget, call.trace
            )

        try:
            answer = await with_retries(
                attempt,
                call.budget,
                policy=self._retries,
                clock=self._clock,
                rng=self._rng,
                min_seconds=0.0,
                telemetry=self._telemetry,
                what="upload",
            )
            response = upload_from_body(answer.body, content_type)
        except (UpstreamInternal, UpstreamBadResponse) as error:
            if isinstance(error, UpstreamBadResponse):
                self._telemetry.emit(UpstreamFailed(error.reason))
            raise _upload_failed(error) from None
        except InsufficientCredits as error:
            raise InsufficientCredits(
                "Stablecog refuses uploads from an account with no credits left (an upload "
                "itself costs nothing); top it up first",
                reason=error.reason,
                domain=error.domain,
                metadata=error.metadata,
            ) from None
        report.upstream_seconds = answer.seconds
        return Answer(response)

    # --- CreateUpscale ---

    async def _create_upscale(
        self, request: generation_pb2.CreateUpscaleRequest, call: Call, report: CallReport
    ) -> Answer:
        self._reject(self._validator.violations(request), report)
        idempotency_key = idempotency_key_from(call.metadata)
        key = self._keys.resolve(call.metadata)
        report.account = key.fingerprint
        report.outputs_requested = UPSCALE_CREDITS
        report.model_id = request.model_id
        try:
            upscaled = await self._upscaler.upscale(
                UpscaleCall(
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
        except GatewayError as error:
            if error.metadata.get(REPLAY_METADATA) == "true":
                report.cache_result = REPLAYED
            raise
        response = upscaled.response
        response.cache_result = upscaled.cache_result
        name = cache_result_name(upscaled.cache_result)
        if name in SAVED_RESULTS:
            self._telemetry.emit(CreditsSaved(call.caller, UPSCALE_CREDITS))
        report.cache_result = name
        report.model_id = response.settings.model_id or report.model_id
        report.outputs_returned = len(response.outputs)
        report.remaining_credits = response.remaining_credits
        report.upstream_seconds = upscaled.upstream_seconds
        trailers = [("x-cache", name)]
        if name == REPLAYED:
            trailers.append((REPLAY_TRAILER, "true"))
        return Answer(response, trailers=tuple(trailers))

    def _reject(self, found: list[FieldViolation], report: CallReport) -> None:
        """Raise InvalidRequest for `found` (counted per field), or return when empty."""
        if not found:
            return
        fields = tuple(sorted({v.field for v in found}))
        for field in fields:
            self._telemetry.emit(ValidationFailed(field))
        report.invalid_fields = fields
        raise InvalidRequest(
            f"invalid request: {len(found)} violation(s) on {', '.join(fields)}",
            violations=found,
        )


def _upload_failed(error: GatewayError) -> UpstreamReadFailed:
    """An upload that failed once sent: it moves no credits, so it is safe to send again."""
    return UpstreamReadFailed(
        f"the upload failed at Stablecog ({error.reason}); an upload costs nothing, so "
        "retrying is safe",
        reason=UPLOAD_FAILED,
        metadata={**error.metadata, "cause": error.reason},
    )
