"""Every Prometheus collector the gateway exports, built on an injected registry.

gRPC server metrics use the go-grpc-prometheus names and labels so existing dashboards
work. Every label value is bounded: callers, models, accounts and error reasons past a
limit are counted as `other`, and label sets known up front are initialised at start
so `rate()` works from the first scrape.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.balance import Balance, BalanceBook
from gateway.call import cache_result_name
from gateway.call_series import CallSeries, MethodSeries, PlainCount, PlainCounter
from gateway.errors import GRPC_CODES as ERROR_CLASSES
from gateway.errors import CallTimedOut, UpstreamError
from gateway.events import (
    CACHE_BACKEND_OPERATIONS,
    BalanceObserved,
    CacheBackendFailed,
    CacheDecided,
    CallHandled,
    CallReplayed,
    CallStarted,
    CatalogChecksSkipped,
    CircuitChanged,
    CreditsSaved,
    CreditsSpent,
    Event,
    IdempotentReplayed,
    UpstreamFailed,
    UpstreamRequestEnded,
    UpstreamRetried,
    ValidationFailed,
)
from gateway.labels import OTHER, UNKNOWN, BoundedLabel, sanitize_label
from gateway.upstream_defaults import (
    CREATE_ENDPOINT,
    CREDITS_ENDPOINT,
    DEFAULTS_ENDPOINT,
    KNOWN_MODEL_IDS,
    MODELS_ENDPOINT,
    UPLOAD_ENDPOINT,
    UPSCALE_ENDPOINT,
)
from gateway.upstream_errors import STATIC_REASONS

# How many raw `x-caller` values `caller_label` remembers the label of.
CALLER_LABEL_MEMO = 1024
# Bounds of the memos of raw values (model id and caller, account) -> their labels and
# children; cleared when full, as the raw values are not ours to choose.
SPENT_MEMO = 1024
# Raw values longer than this are not remembered (a label keeps 63 characters of them).
MEMO_MAX_CHARS = 128
# Generations take seconds to minutes (the upstream's worker gives up after 240 s, the
# gateway after --upstream-timeout, 600 s by default); cache hits take milliseconds. The
# gateway and upstream histograms share buckets so their quantiles compare.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
    180.0,
    240.0,
    300.0,
    450.0,
    600.0,
)
# Every CacheResult of the contract: what the call's response says.
HIT = cache_result_name(generation_pb2.CACHE_RESULT_HIT)
CACHE_RESULTS = tuple(
    cache_result_name(value)
    for value in generation_pb2.CacheResult.values()
    if value != generation_pb2.CACHE_RESULT_UNSPECIFIED
)
UPSTREAM_ENDPOINTS = (
    CREATE_ENDPOINT,
    MODELS_ENDPOINT,
    DEFAULTS_ENDPOINT,
    CREDITS_ENDPOINT,
    UPLOAD_ENDPOINT,
    UPSCALE_ENDPOINT,
)
# Every reason an upstream call can fail with, short of the upstream naming a new code:
# the upstream errors' and the timeouts' defaults, and the fixed reasons of their mapping.
UPSTREAM_REASONS = tuple(
    sorted(
        {
            cls.default_reason
            for cls in ERROR_CLASSES
            if issubclass(cls, UpstreamError | CallTimedOut)
        }
        | set(STATIC_REASONS)
    )
)
# The outcomes a repeat with an idempotency key can replay.
REPLAY_RESULTS = ("ok", "error")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error", "timeout")
GRPC_CODES = tuple(code.name for code in grpc.StatusCode)
# The unary methods of our own service, initialised at start.
SERVICE_METHODS = tuple(
    (generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name, method.name)
    for method in generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].methods
)
# The fields of every request the gateway validates.
VALIDATION_FIELDS = tuple(
    dict.fromkeys(
        field
        for request in (
            generation_pb2.GenerationRequest,
            generation_pb2.UploadImageRequest,
            generation_pb2.CreateUpscaleRequest,
        )
        for field in request.DESCRIPTOR.fields_by_name
    )
)


class GatewayMetrics:
    """The gateway's collectors; a gateway.events.Telemetry sink for every part of the
    gateway that emits events (the call runner, servicer, cache, generator, upstream client)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        default_caller: str,
        max_callers: int,
        validation_fields: Sequence[str] = VALIDATION_FIELDS,
        known_models: Sequence[str] = KNOWN_MODEL_IDS,
        grpc_methods: Sequence[tuple[str, str]] = SERVICE_METHODS,
        max_models: int = 64,
        max_accounts: int = 64,
        max_reasons: int = 64,
    ) -> None:
        self.registry = registry
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds, start time.
        ProcessCollector(registry=registry)
        self.default_caller = sanitize_label(default_caller) or UNKNOWN
        # The default caller is always admitted, on top of `max_callers` others.
        self._callers = BoundedLabel(max_callers + 1, [self.default_caller])
        # raw `x-caller` value -> its label, for the values seen (two to three lookups a
        # call); bounded, as the raw values are the callers' to choose.
        self._caller_labels: dict[str | None, str] = {}
        # Known models and reasons are always admitted, on top of `max_*` others.
        models = {sanitize_label(m) for m in known_models}
        self._models = BoundedLabel(len(models) + max_models, models)
        self._accounts = BoundedLabel(max_accounts)
        self._balances: BalanceBook[str] = BalanceBook()
        self._retired: set[str] = set()
        self._reasons = BoundedLabel(len(UPSTREAM_REASONS) + max_reasons, UPSTREAM_REASONS)
        self._fields = frozenset(validation_fields)

        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        histogram = functools.partial(Histogram, registry=registry, buckets=LATENCY_BUCKETS)
        per_model = ("model", "caller")

        # grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds
        # and stablecog_inflight_requests: updated on every call, so counted in plain
        # numbers and exported when scraped (gateway.call_series).
        self.calls = CallSeries(
            registry, buckets=LATENCY_BUCKETS, codes=GRPC_CODES, methods=grpc_methods
        )
        self.upstream_duration = histogram(
            "stablecog_upstream_request_duration_seconds",
            "Duration of HTTP requests to the Stablecog API, by endpoint and status class.",
            ("endpoint", "status_class"),
        )
        self.upstream_errors = counter(
            "stablecog_upstream_errors_total",
            "Failed upstream calls, by ErrorInfo reason.",
            ("reason",),
        )
        self.upstream_retries = counter(
            "stablecog_upstream_retries_total",
            "Upstream calls tried again because the upstream provably did not act, by reason.",
            ("reason",),
        )
        self.circuit_state = gauge(
            "stablecog_upstream_circuit_state",
            "The upstream circuit breaker: 0 closed (calls go through), 1 open (they fail fast, "
            "nothing sent), 2 half-open (one probe call decides).",
        )
        self.credits_remaining = gauge(
            "stablecog_credits_remaining",
            "Credits left on an account, as of its last generation or GetCredits "
            "(account: a short non-reversible fingerprint of the key).",
            ("account",),
        )
        # Updated by every generation: plain numbers (gateway.call_series).
        self.credits_spent = PlainCounter(
            registry,
            "stablecog_credits_spent_total",
            "Credits charged by the upstream for generations.",
            per_model,
        )
        self.images_generated = PlainCounter(
            registry,
            "stablecog_images_generated_total",
            "Images the upstream returned.",
            per_model,
        )
        self.images_filtered = PlainCounter(
            registry,
            "stablecog_images_filtered_total",
            "Images requested but not returned (the upstream silently drops filtered outputs).",
            per_model,
        )
        # Updated by every cache hit: plain numbers (gateway.call_series).
        self.saved_credits = PlainCounter(
            registry,
            "stablecog_credits_saved_total",
            "Credits a call would have cost had it not been served by the cache, "
            "coalesced with an identical call in flight, or replayed for a repeated "
            "idempotency key.",
            ("caller",),
        )
        self.cache_requests = PlainCounter(
            registry,
            "stablecog_cache_requests_total",
            "Calls by how the cache served them (the response's cache_result).",
            ("result",),
        )
        self.cache_backend_errors = counter(
            "stablecog_cache_backend_errors_total",
            "Lookups and stores of calls that the shared cache backend (Redis) failed; "
            "the calls were served without it.",
            ("operation",),
        )
        self.idempotent_replays = counter(
            "stablecog_idempotent_replays_total",
            "Repeats of a call with the same idempotency key answered with the first call's "
            "outcome (result: ok or error) instead of a generation of their own.",
            ("caller", "result"),
        )
        self.catalog_checks_skipped = counter(
            "stablecog_catalog_checks_skipped_total",
            "Generations validated without the catalog-aware checks (unknown model, default "
            "size, scheduler compatibility): the model catalog could not be fetched.",
        )
        self.validation_failures = counter(
            "stablecog_validation_failures_total",
            "Requests rejected for breaking a documented constraint, by request field.",
            ("field",),
        )
        self.dependency_reachable = gauge(
            "stablecog_dependency_reachable",
            "1 if a dependency answered its last check, else 0 (upstream: GET /v1/health; "
            "redis, with --cache redis: PING); checked at start and every 30 s.",
            ("dependency",),
        )
        # Label children resolved once and kept: `.labels()` takes a lock and builds keys on
        # every call. Only series that are never removed are kept here.
        self._children: dict[tuple[object, ...], Any] = {}
        # (raw model id, raw caller) -> the credits, generated and filtered children; raw
        # account -> its label; account label -> its balance gauge (dropped on retirement).
        self._spent: dict[tuple[str, str], tuple[PlainCount, PlainCount, PlainCount]] = {}
        self._account_labels: dict[str, str] = {}
        self._balance_gauges: dict[str, Any] = {}
        self._initialise(grpc_methods, known_models)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _initialise(
        self, grpc_methods: Sequence[tuple[str, str]], known_models: Sequence[str]
    ) -> None:
        for endpoint in UPSTREAM_ENDPOINTS:
            for status_class in STATUS_CLASSES:
                self.upstream_duration.labels(endpoint, status_class)
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        for operation in CACHE_BACKEND_OPERATIONS:
            self.cache_backend_errors.labels(operation)
        for reason in UPSTREAM_REASONS:
            self.upstream_errors.labels(reason)
            self.upstream_retries.labels(reason)
        for field in self._fields:
            self.validation_failures.labels(field)
        self.validation_failures.labels(OTHER)
        self.saved_credits.labels(self.default_caller)
        for result in REPLAY_RESULTS:
            self.idempotent_replays.labels(self.default_caller, result)
        for model in known_models:
            for counter in (self.credits_spent, self.images_generated, self.images_filtered):
                counter.labels(self._models(sanitize_label(model)), self.default_caller)

    # --- what the composition root tells it ---

    def retire_account(self, fingerprint: str, *, successor: str) -> None:
        """Drop a rotated-away key's balance series; answers still in flight for that key
        do not bring it back. `successor` (the new key) is never retired."""
        self._retired.add(fingerprint)
        self._retired.discard(successor)
        self._balances.forget(fingerprint)
        self._balance_gauges.pop(fingerprint, None)
        with contextlib.suppress(KeyError):
            self.credits_remaining.remove(fingerprint)
        # Its place in the accounts' bound goes to the next account: else, after as many
        # rotations as the bound, the current key would be `other` and lose its gauge
        # (and a low-credits alert its series). The memo may hold `other` for one that fits.
        self._accounts.forget(fingerprint)
        self._account_labels.clear()

    def set_reachable(self, dependency: str, reachable: bool) -> None:
        """The result of a reachability check (gateway.reachability)."""
        self.dependency_reachable.labels(dependency).set(1 if reachable else 0)

    def caller_label(self, raw: str | None) -> str:
        """The bounded caller label for an `x-caller` value (None: the configured caller)."""
        known = self._caller_labels.get(raw)
        if known is not None:
            return known
        value = sanitize_label(raw)
        label = self._callers(value) if value else self.default_caller
        if len(self._caller_labels) >= CALLER_LABEL_MEMO:
            self._caller_labels.clear()
        self._caller_labels[raw] = label
        return label

    # --- gateway.events.Telemetry ---

    def emit(self, event: Event) -> None:
        self._handlers[type(event)](self, event)

    def _call_started(self, event: CallStarted) -> None:
        self.calls.of(event.service, event.method).started += 1
        self.calls.in_flight += 1

    def _call_handled(self, event: CallHandled) -> None:
        self.calls.in_flight -= 1
        exemplar = {"trace_id": event.trace_id} if event.trace_id else None
        _handled(self.calls.of(event.service, event.method), event.code, event.seconds, exemplar)

    def _call_replayed(self, event: CallReplayed) -> None:
        """What CallStarted, CacheDecided(hit), CreditsSaved and CallHandled(OK) update."""
        series = self.calls.of(event.service, event.method)
        series.started += 1
        self._cache_result(HIT)
        self._saved(event.caller, event.credits)
        _handled(series, "OK", event.seconds)

    def _upstream_request_ended(self, event: UpstreamRequestEnded) -> None:
        self._child(self.upstream_duration, event.endpoint, event.status_class).observe(
            event.seconds
        )

    def _upstream_failed(self, event: UpstreamFailed) -> None:
        self.upstream_errors.labels(self._reasons(sanitize_label(event.reason) or UNKNOWN)).inc()

    def _upstream_retried(self, event: UpstreamRetried) -> None:
        self.upstream_retries.labels(self._reasons(sanitize_label(event.reason) or UNKNOWN)).inc()

    def _circuit_changed(self, event: CircuitChanged) -> None:
        self.circuit_state.set(event.value)

    def _credits_spent(self, event: CreditsSpent) -> None:
        children = self._spent.get((event.model_id, event.caller))
        if children is None:
            children = self._spent_children(event.model_id, event.caller)
        spent, generated, filtered = children
        spent.inc(max(event.credits, 0))
        generated.inc(max(event.outputs_returned, 0))
        filtered.inc(max(event.outputs_requested - event.outputs_returned, 0))
        # The account takes its place in the bound even without a balance, as it always has.
        fingerprint = self._account_label(event.account)
        if event.balance is not None:
            self._offer_balance(fingerprint, event.balance)

    def _spent_children(
        self, model_id: str, caller: str
    ) -> tuple[PlainCount, PlainCount, PlainCount]:
        labels = (self._models(sanitize_label(model_id) or UNKNOWN), self.caller_label(caller))
        children = (
            self.credits_spent.labels(*labels),
            self.images_generated.labels(*labels),
            self.images_filtered.labels(*labels),
        )
        if len(model_id) <= MEMO_MAX_CHARS and len(caller) <= MEMO_MAX_CHARS:
            if len(self._spent) >= SPENT_MEMO:
                self._spent.clear()
            self._spent[(model_id, caller)] = children
        return children

    def _account_label(self, account: str) -> str:
        label = self._account_labels.get(account)
        if label is None:
            sanitized = sanitize_label(account) or UNKNOWN
            if sanitized in self._retired:  # its series is gone: it takes no place
                return sanitized
            label = self._accounts(sanitized)
            if len(account) <= MEMO_MAX_CHARS:
                if len(self._account_labels) >= SPENT_MEMO:
                    self._account_labels.clear()
                self._account_labels[account] = label
        return label

    def _offer_balance(self, fingerprint: str, balance: Balance) -> None:
        """One gauge per account; the accounts past the bound would mix in `other`."""
        if fingerprint == OTHER or fingerprint in self._retired:
            return
        if self._balances.offer(fingerprint, balance):
            gauge = self._balance_gauges.get(fingerprint)
            if gauge is None:
                gauge = self._balance_gauges[fingerprint] = self.credits_remaining.labels(
                    fingerprint
                )
            gauge.set(balance.credits)

    def _balance_observed(self, event: BalanceObserved) -> None:
        self._offer_balance(self._account_label(event.account), event.balance)

    def _credits_saved(self, event: CreditsSaved) -> None:
        self._saved(event.caller, event.credits)

    def _saved(self, caller: str, credits: int) -> None:
        self._child(self.saved_credits, self.caller_label(caller)).inc(max(credits, 0))

    def _cache_decided(self, event: CacheDecided) -> None:
        self._cache_result(event.result)

    def _cache_result(self, result: str) -> None:
        self._child(self.cache_requests, result if result in CACHE_RESULTS else OTHER).inc()

    def _idempotent_replayed(self, event: IdempotentReplayed) -> None:
        result = event.result if event.result in REPLAY_RESULTS else OTHER
        self.idempotent_replays.labels(self.caller_label(event.caller), result).inc()

    def _cache_backend_failed(self, event: CacheBackendFailed) -> None:
        operation = event.operation if event.operation in CACHE_BACKEND_OPERATIONS else OTHER
        self.cache_backend_errors.labels(operation).inc()

    def _catalog_checks_skipped(self, event: CatalogChecksSkipped) -> None:
        self.catalog_checks_skipped.inc()

    def _validation_failed(self, event: ValidationFailed) -> None:
        field = event.field if event.field in self._fields else OTHER
        self.validation_failures.labels(field).inc()

    # One handler per event type; tests/observability/test_metrics.py proves it complete.
    _handlers: ClassVar[dict[type[Event], Callable[[GatewayMetrics, Any], None]]] = {
        CallStarted: _call_started,
        CallHandled: _call_handled,
        CallReplayed: _call_replayed,
        UpstreamRequestEnded: _upstream_request_ended,
        UpstreamFailed: _upstream_failed,
        UpstreamRetried: _upstream_retried,
        CircuitChanged: _circuit_changed,
        CreditsSpent: _credits_spent,
        CreditsSaved: _credits_saved,
        BalanceObserved: _balance_observed,
        CacheDecided: _cache_decided,
        IdempotentReplayed: _idempotent_replayed,
        CacheBackendFailed: _cache_backend_failed,
        ValidationFailed: _validation_failed,
        CatalogChecksSkipped: _catalog_checks_skipped,
    }


def _handled(
    series: MethodSeries, code: str, seconds: float, exemplar: dict[str, str] | None = None
) -> None:
    """One call of `series` answered with `code` after `seconds`."""
    series.handled[code] = series.handled.get(code, 0.0) + 1
    series.observe(seconds, exemplar)
