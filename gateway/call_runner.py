"""The one place a call is started and its outcome recorded.

For every unary call of our services, `CallRunner.run` parses the metadata once, builds
the call's `Call` (request id, caller, deadline budget, cache control) and an empty
`CallReport`, runs the RPC's pipeline with both, and then records the outcome in one place:
the grpc_server_* metrics, one JSON access-log line on the `gateway.access` logger,
the response and its trailers, or the error as a `google.rpc.Status`; either way the
trailers carry the request id (`x-request-id`: with the status, so it costs no write of its
own, and a caller gets it on errors too). It also counts calls in flight and refuses new
ones while the gateway drains.

A method may also give a `Replay`: before its pipeline runs, it may answer a call again
from what it answered an identical one with (a cache hit repeated), synchronously and with
no I/O. Such a call is recorded exactly as `run` records it (the same metrics, trailers and
access-log line); it only skips the work whose result is already known.

Health checks and reflection are not run through it (as go-grpc-prometheus users expect).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_status import rpc_status

from gateway import tracing
from gateway.call import (
    SAVED_RESULTS,
    CacheControl,
    Call,
    CallBudget,
    CallReport,
    CallStart,
    parse_metadata,
    prompt_digest,
    request_id_from,
)
from gateway.errors import (
    GatewayDraining,
    GatewayError,
    GatewayInternal,
    GatewayOverloaded,
    GenerationAbandoned,
    InvalidRequest,
    grpc_code,
    to_status,
)
from gateway.events import CallHandled, CallReplayed, CallStarted, Telemetry
from gateway.identity import Identifier, IdentityPolicy
from gateway.labels import sanitize_label
from gateway.logs import REDACTED, LineTemplate, log_fields
from gateway.tracing import Tracing

_log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

# The caller's own deadline timer fires a little before ours (ours starts when its
# header arrives), and its cancel can reach us first.
DEADLINE_SLACK_SECONDS = 0.1
_ERROR_CODES = frozenset({"UNKNOWN", "INTERNAL", "DATA_LOSS"})
_SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
# The largest request a call may carry (grpc's own limit, set higher in gateway.app,
# then only cuts what is far beyond it, without details).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# The starts remembered by metadata (`CallRunner._call_start`); cleared when full.
START_MEMO_ENTRIES = 1024
# Metadata that names one call, so a start that carries it is not remembered.
PER_CALL_METADATA = frozenset(
    {"x-request-id", "traceparent", "tracestate", "grpc-trace-bin", "b3", "x-b3-traceid"}
)
# The access-line templates of replayed calls (`CallRunner._log_replayed`); cleared when full.
LINE_TEMPLATES = 1024

RequestT = TypeVar("RequestT", bound=Message)
ResponseT = TypeVar("ResponseT", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Answer:
    """A pipeline's successful outcome: the response and the trailers to send with it."""

    response: Message
    trailers: Sequence[tuple[str, str]] = ()


Pipeline = Callable[[RequestT, Call, CallReport], Awaitable[Answer]]


@dataclass(frozen=True, eq=False)  # compared and hashed as itself (it holds a Message)
class Replayed:
    """A call answered again from the cache hit it repeats: the response (shared by every
    call it answers, so never modified), the trailers to send with it, the report to
    record (read, never written), the credits the hit saved, and the request's prompt
    (logged only with --log-prompts)."""

    response: Message
    trailers: Sequence[tuple[str, str]]
    report: CallReport
    credits_saved: int = 0
    prompt: str | None = None


# Answers a call (its request's bytes, its start) from the cache hit an identical call was
# answered with, emitting nothing (the runner reports the call as one `CallReplayed`); or
# returns None, and the call runs in full. Synchronous and without I/O.
Replay = Callable[[bytes, CallStart], Replayed | None]


class InFlight:
    """The calls in flight (their tasks); `wait_idle` returns when none are left."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # The loop seen last, and the thread it ran on.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    @property
    def count(self) -> int:
        return len(self.tasks)

    def enter(self) -> asyncio.Task[object]:
        """Count the current task in flight; give it back to `leave`. The task is looked up
        on the loop seen last when this is its thread (on Python 3.11, finding the running
        loop is a getpid() system call; a thread runs one loop at a time, and a loop that
        stopped has no current task), else on the running loop."""
        task = None
        if self._loop is not None and self._thread == threading.get_ident():
            task = asyncio.current_task(self._loop)
        if task is None:
            self._loop, self._thread = asyncio.get_running_loop(), threading.get_ident()
            task = asyncio.current_task(self._loop)
        assert task is not None
        self.tasks.add(task)
        self._idle.clear()
        return task

    def leave(self, task: asyncio.Task[object]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class CallRunner:
    """Starts calls, runs their pipelines, records their outcomes."""

    def __init__(
        self,
        *,
        telemetry: Telemetry,
        caller_label: Callable[[str | None], str],
        upstream_timeout: float,
        log_prompts: bool = False,
        tracing: Tracing | None = None,
        max_concurrent_calls: int | None = None,
        identify: Identifier | None = None,
    ) -> None:
        self._identify = identify or Identifier(IdentityPolicy())
        # Admission is ours, not grpc's maximum_concurrent_rpcs: that one counts health
        # checks too (a saturated sidecar would fail its probes and be restarted), and its
        # rejections carry no details and are counted nowhere.
        self._max_concurrent_calls = max_concurrent_calls
        self._tracing = tracing or Tracing.off()
        self._telemetry = telemetry
        self._caller_label = caller_label
        self._upstream_timeout = upstream_timeout
        self._log_prompts = log_prompts
        self.in_flight = InFlight()
        self.draining = False
        self._abandoning = False
        # Metadata -> its start, when the identity policy reads nothing but the metadata.
        self._starts: dict[object, CallStart] | None = (
            {} if self._identify.reads_only_metadata else None
        )
        # (answer, start) -> their access-line template and its fields.
        self._lines: dict[tuple[Replayed, CallStart], tuple[LineTemplate, dict[str, object]]] = {}

    def unary(
        self,
        service: str,
        method: str,
        request_type: type[RequestT],
        response_type: type[Message],
        pipeline: Pipeline[RequestT],
        max_request_bytes: int = MAX_REQUEST_BYTES,
        replay: Replay | None = None,
    ) -> grpc.RpcMethodHandler[bytes, Message]:
        """The grpc handler for one unary method: the request arrives as bytes and is
        decoded here, so an undecodable one is answered and recorded like any other.
        `max_request_bytes` raises the limit for a method that needs it (UploadImage);
        `replay`, if given, is tried before the pipeline (see the module docstring)."""

        started = CallStarted(service, method)  # immutable: made once per method

        async def handle(raw: bytes, context: Context) -> Message:
            start = None
            if replay is not None and self._offers_replays():
                began = time.perf_counter()
                start = self._call_start(context)  # the full path's too, if not replayed
                replayed = self.replayed(started, raw, context, replay, start, began)
                if replayed is not None:
                    return replayed
            return await self.run(
                started,
                raw,
                context,
                request_type.FromString,
                pipeline,
                max_request_bytes=max_request_bytes,
                start=start,
            )

        return grpc.unary_unary_rpc_method_handler(
            handle,
            request_deserializer=None,
            response_serializer=response_type.SerializeToString,
        )

    async def run(
        self,
        started: CallStarted,
        raw: bytes,
        context: Context,
        decode: Callable[[bytes], RequestT],
        pipeline: Pipeline[RequestT],
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        start: CallStart | None = None,
    ) -> Message:
        """One call of the method `started` names (its event, made once per method);
        `start`, the call's start if it was already derived (for a replay offer)."""
        began = time.perf_counter()
        service, method = started.service, started.method
        call = self._start(service, method, context, start)
        report = CallReport()
        self._telemetry.emit(started)
        code = "UNKNOWN"
        error: GatewayError | None = None
        # Admission is decided here, before any await, and a refused call holds no slot.
        admitted = self._admits()
        try:
            held = self.in_flight.enter() if admitted else None
            try:
                outcome = await self._outcome(
                    raw, decode, call, report, pipeline, admitted, max_request_bytes
                )
                request_id = ("x-request-id", call.request_id)
                if isinstance(outcome, Answer):
                    context.set_trailing_metadata((*outcome.trailers, request_id))
                    code = "OK"
                    return outcome.response
                error = outcome
                code, status = _status_of(error)
                await context.abort(
                    status.code, status.details, (*status.trailing_metadata, request_id)
                )
            finally:
                if held is not None:
                    self.in_flight.leave(held)
        except asyncio.CancelledError:
            if self._abandoning:  # the gateway cut it, not the caller: say what that means
                error = _ABANDONED
                code, status = _status_of(error)
                await context.abort(
                    status.code,
                    status.details,
                    (*status.trailing_metadata, ("x-request-id", call.request_id)),
                )
            code = "CANCELLED"
            remaining = context.time_remaining()
            if remaining is not None and remaining <= DEADLINE_SLACK_SECONDS:
                code = "DEADLINE_EXCEEDED"
            raise
        finally:
            seconds = time.perf_counter() - began
            trace_id = call.trace.trace_id if call.trace is not None else None
            self._telemetry.emit(CallHandled(service, method, code, seconds, trace_id))
            _end_span(call, report, code, error)
            logged = _Logged(call.request_id, method, call.caller, call.caller_raw, trace_id)
            _log_call(logged, report, code, error, seconds)

    def _offers_replays(self) -> bool:
        """Whether a call may be replayed now: the gateway is not draining and has room
        for it, tracing is off (the call's span is made on the full path), and the
        identity policy reads only the metadata (sidecar mode: else the start could not
        be remembered, and deriving it is most of what a replay saves)."""
        return (
            not self.draining
            and not self._tracing.enabled
            and self._starts is not None
            and self._admits()
        )

    def replayed(
        self,
        started: CallStarted,
        raw: bytes,
        context: Context,
        replay: Replay,
        start: CallStart,
        began: float,
    ) -> Message | None:
        """The call (`start`, begun at `began`) answered by `replay` and recorded as `run`
        records a call, or None to run it; offered only when `_offers_replays`, and only
        for an identified caller. It is answered without awaiting anything, so it is never
        in flight while the gateway drains or abandons calls."""
        if start.refused is not None:
            return None
        try:
            answer = replay(raw, start)
        except Exception:  # a bug: the full path answers, and the bug is logged
            _log_bug("replaying a call failed; it runs in full", started.method, start.metadata)
            return None
        if answer is None:
            return None
        request_id = request_id_from(start.request_id)
        context.set_trailing_metadata((*answer.trailers, ("x-request-id", request_id)))
        seconds = time.perf_counter() - began
        self._telemetry.emit(
            CallReplayed(
                started.service, started.method, start.caller, answer.credits_saved, seconds
            )
        )
        self._log_replayed(request_id, started.method, start, answer, seconds)
        return answer.response

    def _log_replayed(
        self, request_id: str, method: str, start: CallStart, answer: Replayed, seconds: float
    ) -> None:
        """The access line of a replayed call: the one `_log_call` writes, from a template
        made once per answer and start (every field but the time, request id and latency
        is theirs)."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        key = (answer, start)
        known = self._lines.get(key)
        if known is None:
            report = answer.report
            if self._log_prompts and answer.prompt:
                report = dataclasses.replace(report, prompt=answer.prompt)
            logged = _Logged("", method, start.caller, start.caller_raw)
            entry = _access_entry(logged, report, "OK", None, 0.0)
            template = LineTemplate(
                access_log, logging.INFO, "call", entry, ("request_id", "latency_seconds")
            )
            if len(self._lines) >= LINE_TEMPLATES:
                self._lines.clear()
            known = self._lines[key] = (template, entry)
        latency = round(seconds, 6)
        if not known[0].write(request_id, latency):  # another handler: a record, as usual
            entry = dict(known[1], request_id=request_id, latency_seconds=latency)
            log_fields(access_log, logging.INFO, "call", entry)

    def _admits(self) -> bool:
        return (
            self._max_concurrent_calls is None or self.in_flight.count < self._max_concurrent_calls
        )

    async def abandon(self, within: float) -> int:
        """Cut every call still in flight (the grace period is over, or a second stop
        signal came): each caller is told the call may have been charged. Returns how
        many were cut, once they have been answered (or `within` seconds passed)."""
        self._abandoning = True
        tasks = list(self.in_flight.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        return len(tasks)

    async def _outcome(
        self,
        raw: bytes,
        decode: Callable[[bytes], RequestT],
        call: Call,
        report: CallReport,
        pipeline: Pipeline[RequestT],
        admitted: bool = True,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> Answer | GatewayError:
        """The pipeline's answer, or the error the caller gets (a bug becomes
        GATEWAY_INTERNAL_ERROR, logged here with a redacted traceback)."""
        try:
            if self.draining:
                raise GatewayDraining(
                    "the gateway is shutting down; retry on another replica", retry_after=1.0
                )
            if not admitted:
                raise GatewayOverloaded(
                    f"the gateway is handling its maximum of {self._max_concurrent_calls} calls "
                    "(--max-concurrent-calls); nothing was sent, retry shortly",
                    retry_after=1.0,
                )
            if call.refused is not None:
                raise call.refused
            request = self._decoded(raw, decode, max_request_bytes)
            prompt = getattr(request, "prompt", None)
            if isinstance(prompt, str) and prompt:
                report.prompt_digest = prompt_digest(prompt)
                if self._log_prompts:
                    report.prompt = prompt
            return await pipeline(request, call, report)
        except GatewayError as failed:
            return failed
        except Exception:  # a bug: never let it leave as UNKNOWN with internals
            _log_bug("unexpected failure", call.method, call.metadata, call.request_id)
            return _INTERNAL

    def _decoded(
        self, raw: bytes, decode: Callable[[bytes], RequestT], limit: int = MAX_REQUEST_BYTES
    ) -> RequestT:
        if len(raw) > limit:
            raise InvalidRequest(
                f"the request is {len(raw)} bytes; at most {limit} are accepted for this "
                "method (prompts are read only up to their first 500 bytes upstream)",
                reason="REQUEST_TOO_LARGE",
            )
        try:
            return decode(raw)
        except (DecodeError, UnicodeDecodeError):  # the pure-Python runtime raises the latter
            raise InvalidRequest(
                "the request is not a valid protobuf message of this method's type (malformed "
                "bytes, or a string field that is not UTF-8)",
                reason="UNDECODABLE_REQUEST",
            ) from None

    def _start(self, service: str, method: str, context: Context, start: CallStart | None) -> Call:
        if start is None:
            start = self._call_start(context)
        request_id = request_id_from(start.request_id)
        trace = (
            self._tracing.server_span(
                f"{service}/{method}",
                start.metadata,
                {
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": method,
                    "stablecog.caller": start.caller,
                    "stablecog.request_id": request_id,
                },
            )
            if self._tracing.enabled
            else None
        )
        return Call(
            service=service,
            method=method,
            request_id=request_id,
            caller=start.caller,
            caller_raw=start.caller_raw,
            metadata=start.metadata,
            budget=CallBudget.of(self._upstream_timeout, context.time_remaining()),
            cache_control=start.cache_control,
            trace=trace,
            principal=start.principal,
            refused=start.refused,
        )

    def _call_start(self, context: Context) -> CallStart:
        """What the call's metadata says: derived once per distinct metadata when the
        identity policy reads nothing else (callers repeat their metadata call after
        call), and then shared, so never modified."""
        pairs = context.invocation_metadata()
        starts = self._starts
        if starts is not None:
            known = starts.get(pairs)
            if known is not None:
                return known
        metadata = parse_metadata(pairs)
        auth_context = context.auth_context() if self._identify.needs_auth_context else {}
        identified = self._identify(metadata, auth_context)
        raw_caller = identified.name
        caller = self._caller_label(raw_caller)
        # Counted as `other` (past --max-callers): the log still says who it was.
        caller_raw = sanitize_label(raw_caller) if raw_caller is not None else None
        start = CallStart(
            metadata=MappingProxyType(metadata),  # shared by the calls it starts
            caller=caller,
            caller_raw=caller_raw if caller_raw != caller else None,
            principal=identified.principal,
            refused=identified.refused,
            cache_control=CacheControl.from_header(metadata.get("cache-control")),
            request_id=metadata.get("x-request-id"),
        )
        # Not kept for metadata that changes call by call (a proxy's request id, a trace
        # context): it would never be asked for again.
        if starts is not None and PER_CALL_METADATA.isdisjoint(metadata):
            if len(starts) >= START_MEMO_ENTRIES:
                starts.clear()
            starts[pairs] = start
        return start


_INTERNAL = GatewayInternal("the gateway failed unexpectedly; the failure is logged")
_ABANDONED = GenerationAbandoned(
    "the gateway stopped before this call finished (shutdown past its grace period); the "
    "generation may have been charged, so check before retrying"
)


def _status_of(error: GatewayError) -> tuple[str, Any]:
    """The code name and grpc status for `error`; a status that cannot be built (a bug)
    becomes GATEWAY_INTERNAL_ERROR rather than escaping as UNKNOWN."""
    try:
        return grpc_code(error).name, rpc_status.to_status(to_status(error))
    except Exception:
        _log.error("cannot build the status of an error", exc_info=True)
        return grpc_code(_INTERNAL).name, rpc_status.to_status(to_status(_INTERNAL))


def _log_bug(
    message: str, method: str, metadata: Mapping[str, str], request_id: str | None = None
) -> None:
    """Log the exception being handled with its traceback, the call's own forwarded key
    cut out by exact match (gateway.logs then redacts anything that looks like a key)."""
    text = traceback.format_exc()
    token = metadata.get("authorization", "").strip()
    for secret in {token, token.partition(" ")[2].strip()}:
        if len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    _log.error(message, extra={"method": method, "request_id": request_id, "traceback": text})


def _end_span(call: Call, report: CallReport, code: str, error: GatewayError | None) -> None:
    if call.trace is None:
        return
    if code in _SERVER_ERROR_CODES:  # the gRPC server-span rule: not the caller's mistakes
        tracing.fail(call.trace, error.reason if error is not None else code)
    saved = report.cache_result in SAVED_RESULTS
    tracing.end(
        call.trace,
        {
            "rpc.grpc.status_code": getattr(grpc.StatusCode, code).value[0],
            "stablecog.cache_result": report.cache_result,
            "stablecog.credits_spent": (0 if saved else report.outputs_requested)
            if code == "OK"
            else None,
            "stablecog.model_id": report.model_id,
            "stablecog.account": report.account,
            "stablecog.error_reason": error.reason if error is not None else None,
            "stablecog.prompt_sha256": report.prompt_digest,
            "stablecog.prompt": report.prompt,
        },
    )


class _Logged(NamedTuple):
    """Which call an access line is about."""

    request_id: str
    method: str
    caller: str
    caller_raw: str | None = None
    trace_id: str | None = None


def _log_call(
    logged: _Logged, report: CallReport, code: str, error: GatewayError | None, seconds: float
) -> None:
    level = logging.ERROR if code in _ERROR_CODES else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    log_fields(access_log, level, "call", _access_entry(logged, report, code, error, seconds))


def _access_entry(
    logged: _Logged, report: CallReport, code: str, error: GatewayError | None, seconds: float
) -> dict[str, object]:
    """A call's access-log fields, in the order every line has them."""
    entry: dict[str, object] = {
        "request_id": logged.request_id,
        "method": logged.method,
        "caller": logged.caller,
        "grpc_code": code,
        "latency_seconds": round(seconds, 6),
        "upstream_seconds": (
            None if report.upstream_seconds is None else round(report.upstream_seconds, 6)
        ),
        "cache_result": report.cache_result,
        "num_outputs": report.outputs_requested,
        "outputs_returned": report.outputs_returned,
    }
    if code == "OK":
        saved = report.cache_result in SAVED_RESULTS
        entry["credits_spent"] = 0 if saved else report.outputs_requested
        entry["credits_saved"] = report.outputs_requested if saved else 0
    if report.remaining_credits is not None:
        entry["credits_remaining"] = report.remaining_credits
    if report.model_id:
        entry["model_id"] = report.model_id
    if report.account:
        entry["account"] = report.account
    if error is not None:
        entry["error_reason"] = error.reason
    if report.invalid_fields:
        entry["invalid_fields"] = list(report.invalid_fields)
    if report.prompt_digest:
        entry["prompt_sha256"] = report.prompt_digest
    if report.prompt is not None:
        entry["prompt"] = report.prompt
    if logged.caller_raw is not None:
        entry["caller_raw"] = logged.caller_raw
    if logged.trace_id is not None:
        entry["trace_id"] = logged.trace_id
    return entry
