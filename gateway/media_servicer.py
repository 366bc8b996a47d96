"""UploadImage and CreateUpscale: the image RPCs beyond generation.

Registered on GenerationService next to CreateGeneration (gateway.servicer) and run by the
call runner like it, so each call gets the same metrics, access log and error details.

UploadImage is free: its size and type are checked here before anything is sent, and any
failure once the file was sent is UNAVAILABLE (UPLOAD_FAILED), since a retry can cost
nothing; only the upstream's own refusals (a bad file, no credits, the key) keep their rows.

CreateUpscale costs one credit and follows the generation's money rules: validated before
anything is sent, the generation's error table, retried only when the upstream provably did
not act (gateway.upstream_calls), and the spend reported where it happens. An upscale of a
generation output is cached per account and model: an output's picture never changes, so
the same upscale gives the same picture. An upscale of an image URL is not cached: the
bytes behind a URL can change.
"""

from __future__ import annotations

import random

import grpc

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import ApiKey
from gateway.auth import KeyResolver
from gateway.balance import Balance, BalanceBook
from gateway.cache_store import EntryStore
from gateway.call import Call, CallBudget, CallReport, cache_result_name
from gateway.call_runner import Answer, CallRunner
from gateway.circuit import CircuitBreaker
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    DeadlineTooShort,
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
    CacheDecided,
    CreditsSaved,
    CreditsSpent,
    Telemetry,
    UpstreamFailed,
    ValidationFailed,
)
from gateway.generation import MIN_GENERATION_SECONDS
from gateway.media import (
    EXTENSIONS,
    MAX_UPLOAD_REQUEST_BYTES,
    sniff_content_type,
    upload_from_body,
    upscale_cache_key,
    upscale_from_body,
    upscale_to_json,
)
from gateway.retries import RetryPolicy
from gateway.servicer import SERVICE_NAME
from gateway.upstream import StablecogClient, UpstreamAnswer
from gateway.upstream_calls import with_retries
from gateway.upstream_defaults import UPSCALE_CREDITS
from gateway.validation import RequestValidator

CacheResult = generation_pb2.CacheResult
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
        upscales: EntryStore | None = None,
        cache_ttl: float = 0.0,
        retries: RetryPolicy | None = None,
        circuit: CircuitBreaker | None = None,
        min_upscale_seconds: float = MIN_GENERATION_SECONDS,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._runner = runner
        self._validator = validator
        self._keys = keys
        self._client = client
        self._upscales = upscales
        self._cache_ttl = cache_ttl
        self._retries = retries or RetryPolicy()
        self._circuit = circuit
        self._min_upscale_seconds = min_upscale_seconds
        self._telemetry = telemetry
        self._clock = clock
        self._rng = rng or random.Random()
        self._balances: BalanceBook[str] = BalanceBook()

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
        key = self._keys.resolve(call.metadata)
        report.account = key.fingerprint
        report.outputs_requested = UPSCALE_CREDITS
        report.model_id = request.model_id
        entry = upscale_cache_key(request, key.cache_scope) if self._upscales is not None else None
        if entry is None:
            result = CacheResult.CACHE_RESULT_UNCACHEABLE
        elif not call.cache_control.lookup:
            result = CacheResult.CACHE_RESULT_BYPASS
        else:
            hit = await self._lookup(entry, key)
            if hit is not None:
                self._telemetry.emit(CacheDecided(cache_result_name(CacheResult.CACHE_RESULT_HIT)))
                self._telemetry.emit(CreditsSaved(call.caller, UPSCALE_CREDITS))
                return self._answer(hit, CacheResult.CACHE_RESULT_HIT, report)
            result = CacheResult.CACHE_RESULT_MISS
        if call.budget.caller_deadline and call.budget.seconds < self._min_upscale_seconds:
            raise DeadlineTooShort(
                f"the call's deadline leaves {call.budget.seconds:.3f} s, less than any upscale "
                f"takes ({self._min_upscale_seconds:g} s, --min-generation-deadline); nothing "
                "was sent and nothing was charged",
                metadata={"minimum_seconds": f"{self._min_upscale_seconds:g}"},
            )
        self._telemetry.emit(CacheDecided(cache_result_name(result)))
        response, seconds = await self._upscale(request, call, key)
        if entry is not None and call.cache_control.store:
            assert self._upscales is not None
            await self._upscales.put(
                entry, response.SerializeToString(deterministic=True), self._cache_ttl
            )
        report.upstream_seconds = seconds
        return self._answer(response, result, report)

    async def _upscale(
        self, request: generation_pb2.CreateUpscaleRequest, call: Call, key: ApiKey
    ) -> tuple[generation_pb2.CreateUpscaleResponse, float]:
        body = upscale_to_json(request)
        started_at = self._clock.wall()

        async def attempt(budget: CallBudget) -> UpstreamAnswer:
            nonlocal started_at
            started_at = self._clock.wall()
            return await self._client.create_upscale(body, key, budget, call.trace)

        try:
            answer = await with_retries(
                attempt,
                call.budget,
                policy=self._retries,
                clock=self._clock,
                rng=self._rng,
                min_seconds=self._min_upscale_seconds,
                telemetry=self._telemetry,
                circuit=self._circuit,
                what="upscale",
            )
        except GatewayError as error:
            raise _about_the_upscale(error) from None
        try:
            response = upscale_from_body(answer.body)
        except GatewayError as error:  # a 200: charged, even if unreadable
            self._telemetry.emit(UpstreamFailed(error.reason))
            self._spent(call, key, request.model_id or "unknown", 0, None)
            raise
        balance = Balance(response.remaining_credits, observed_at=started_at)
        self._balances.offer(key.cache_scope, balance)
        self._spent(call, key, response.settings.model_id, len(response.outputs), balance)
        return response, answer.seconds

    def _spent(
        self, call: Call, key: ApiKey, model_id: str, returned: int, balance: Balance | None
    ) -> None:
        self._telemetry.emit(
            CreditsSpent(
                caller=call.caller,
                account=key.fingerprint,
                model_id=model_id,
                credits=UPSCALE_CREDITS,
                outputs_requested=UPSCALE_CREDITS if balance is not None else 0,
                outputs_returned=returned,
                balance=balance,
            )
        )

    async def _lookup(self, entry: str, key: ApiKey) -> generation_pb2.CreateUpscaleResponse | None:
        assert self._upscales is not None
        stored = await self._upscales.get(entry)
        if stored is None:
            return None
        response = generation_pb2.CreateUpscaleResponse.FromString(stored)
        balance = self._balances.get(key.cache_scope)
        if balance is not None:
            response.remaining_credits = balance.credits
        return response

    def _answer(
        self,
        response: generation_pb2.CreateUpscaleResponse,
        result: generation_pb2.CacheResult.ValueType,
        report: CallReport,
    ) -> Answer:
        response.cache_result = result
        name = cache_result_name(result)
        report.cache_result = name
        report.model_id = response.settings.model_id or report.model_id
        report.outputs_returned = len(response.outputs)
        report.remaining_credits = response.remaining_credits
        return Answer(response, trailers=(("x-cache", name),))

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


def _about_the_upscale(error: GatewayError) -> GatewayError:
    """The same error, its message saying "upscale" where the generation's table says
    "generation" (the money words stay exact: "may have been charged", "nothing was sent")."""
    if "generation" not in error.message:
        return error
    return type(error)(
        error.message.replace("generations", "upscales").replace("generation", "upscale"),
        reason=error.reason,
        domain=error.domain,
        retry_after=error.retry_after,
        metadata=error.metadata,
        violations=error.violations,
    )
