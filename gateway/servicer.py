"""GenerationService: per call, validate -> resolve the key -> generate -> answer.

A request served as a cache hit is remembered (its bytes, what its verdict "valid" held
under, its prompt), so that an identical call is replayed (gateway.call_runner's `Replay`):
the same checks that would let it through are made (the verdict still holds, no
idempotency key or cache-control, the caller's key resolves), the cache is asked for the
hit without awaiting (`HitReplayer`), and the answer and report built from it are reused
while the cache serves the same entry with the same balance.

No HTTP details here, and nothing about recording: gateway.call_runner starts each call
and records its outcome; this module is the pipeline in between. Every failure is a
GatewayError.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_fingerprint
from gateway.auth import KeyResolver
from gateway.budget_service import get_budget
from gateway.call import (
    IDEMPOTENCY_KEY_METADATA,
    SAVED_RESULTS,
    CacheControl,
    Call,
    CallReport,
    CallStart,
    cache_result_name,
    idempotency_key_from,
    prompt_digest,
)
from gateway.call_runner import Answer, CallRunner, Replayed
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import ConfiguredKeyRejected, GatewayError, InvalidRequest
from gateway.events import NULL_TELEMETRY, CreditsSaved, Telemetry, ValidationFailed
from gateway.generation import Generated, GenerationCall, Generator, HitReplayer
from gateway.idempotency import REPLAY_METADATA, REPLAY_TRAILER
from gateway.validation import RequestValidator

if TYPE_CHECKING:
    from gateway.budgets import Budgets

_log = logging.getLogger(__name__)

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
REJECTED_KEY_LOG_EVERY = 60.0
REPLAYED = cache_result_name(generation_pb2.CACHE_RESULT_REPLAYED)
HIT = cache_result_name(generation_pb2.CACHE_RESULT_HIT)
# The requests remembered for replaying their hits; cleared when full.
REMEMBERED_REQUESTS = 1024


@dataclass
class _Remembered:
    """A request once served as a hit: what its verdict "valid" held under, what the
    report takes from it, and the last answer replayed for it (the hit it was built from,
    the account it was for, the answer)."""

    valid_under: object
    outputs_requested: int
    prompt: str | None
    prompt_digest: str | None
    answer: tuple[Generated, str, Replayed] | None = None


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
        hits: HitReplayer | None = None,
    ) -> None:
        # What serves hits again, when it can; it must sit right behind `generator` for a
        # call with no idempotency key (the composition root knows).
        self._hits = hits if hits is not None and hits.replays else None
        self._remembered: dict[bytes, _Remembered] = {}
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
                    replay=self._replay if self._hits is not None else None,
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
        # Read before the checks: what they held under, should the call be remembered.
        valid_under = self._validator.verdicts_hold() if self._hits is not None else None
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
        response = _answer_of(generated)
        result = cache_result_name(generated.cache_result)
        if result in SAVED_RESULTS:
            self._telemetry.emit(CreditsSaved(call.caller, response.settings.num_outputs))
        _report_answer(report, response, result, generated.upstream_seconds)
        trailers = [("x-cache", result)]
        if result == REPLAYED:
            trailers.append((REPLAY_TRAILER, "true"))
        if (
            result == HIT
            and valid_under is not None
            and idempotency_key is None
            and _cache_allowed(call.cache_control)
        ):
            self._remember(request, valid_under)
        return Answer(response, trailers=tuple(trailers))

    def _remember(self, request: generation_pb2.GenerationRequest, valid_under: object) -> None:
        assert self._hits is not None  # `valid_under` is read only when hits are replayed
        raw = request.SerializeToString(deterministic=True)
        if len(raw) > self._hits.largest_replayed_request:  # never replayed: not kept
            return
        known = self._remembered.get(raw)
        if known is not None and known.valid_under is valid_under:
            return
        if len(self._remembered) >= REMEMBERED_REQUESTS:
            self._remembered.clear()
        prompt = request.prompt or None
        self._remembered[raw] = _Remembered(
            valid_under=valid_under,
            outputs_requested=request.num_outputs if request.HasField("num_outputs") else 0,
            prompt=prompt,
            prompt_digest=prompt_digest(prompt) if prompt else None,
        )

    def _replay(self, raw: bytes, start: CallStart) -> Replayed | None:
        """An identical call's hit, answered again (gateway.call_runner's `Replay`), or
        None: the call then runs in full."""
        known = self._remembered.get(raw)
        if known is None or self._validator.verdicts_hold() is not known.valid_under:
            return None
        metadata = start.metadata
        if IDEMPOTENCY_KEY_METADATA in metadata or not _cache_allowed(start.cache_control):
            return None
        try:
            key = self._keys.resolve(metadata)
        except GatewayError:  # the full path says why
            return None
        assert self._hits is not None
        hit = self._hits.replay_hit(raw, key.cache_scope)
        if hit is None:
            known.answer = None  # not kept past the entry
            return None
        answer = known.answer
        if answer is None or answer[0] is not hit or answer[1] != key.fingerprint:
            response = _answer_of(hit)
            # As the full path fills it: the request's part, then the answer's.
            report = CallReport(
                account=key.fingerprint,
                outputs_requested=known.outputs_requested,
                prompt_digest=known.prompt_digest,
            )
            _report_answer(report, response, HIT, None)
            answer = (
                hit,
                key.fingerprint,
                Replayed(
                    response,
                    (("x-cache", HIT),),
                    report,
                    # What the full path's CreditsSaved says (the response's settings).
                    credits_saved=response.settings.num_outputs,
                    prompt=known.prompt,
                ),
            )
            known.answer = answer
        return answer[2]

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


def _answer_of(generated: Generated) -> generation_pb2.GenerationResponse:
    """The caller's own copy of a generated response, saying how it was served."""
    response = generation_pb2.GenerationResponse()
    response.CopyFrom(generated.response)
    response.cache_result = generated.cache_result
    return response


def _report_answer(
    report: CallReport,
    response: generation_pb2.GenerationResponse,
    result: str,
    upstream_seconds: float | None,
) -> None:
    """What the answer adds to the call's report."""
    report.model_id = response.settings.model_id or report.model_id
    report.outputs_requested = response.settings.num_outputs or report.outputs_requested
    report.outputs_returned = len(response.outputs)
    report.remaining_credits = response.remaining_credits
    report.cache_result = result
    report.upstream_seconds = upstream_seconds


def _cache_allowed(control: CacheControl) -> bool:
    """Whether the caller lets the cache both answer and store (no `cache-control`)."""
    return control.lookup and control.store
