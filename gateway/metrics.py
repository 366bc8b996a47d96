"""Every Prometheus collector the gateway exports, built on an injected registry.

gRPC server metrics use the go-grpc-prometheus names and labels so existing dashboards
work. Every label value is bounded: callers, models, accounts and error reasons past a
limit are counted as `other`, and label sets known up front are initialised at start
so `rate()` works from the first scrape.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from gateway._gen.stablecog.v1 import generation_pb2

OTHER = "other"
UNKNOWN = "unknown"

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
CACHE_RESULTS = ("hit", "miss", "coalesced", "bypass", "uncacheable", "error")
UPSTREAM_ENDPOINTS = ("generation_create",)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error", "timeout")
GRPC_CODES = tuple(code.name for code in grpc.StatusCode)
# The unary methods of our own service, initialised at start.
SERVICE_METHODS = tuple(
    (generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name, method.name)
    for method in generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].methods
)
VALIDATION_FIELDS = tuple(generation_pb2.GenerationRequest.DESCRIPTOR.fields_by_name)

_LABEL_MAX = 63
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def sanitize_label(raw: str | None) -> str:
    """A label value fit for metrics and logs: at most 63 safe characters, or ''.

    Idempotent, so a value already sanitized maps to itself.
    """
    if raw is None:
        return ""
    return _LABEL_UNSAFE.sub("_", raw.strip())[:_LABEL_MAX]


class BoundedLabel:
    """Admits the first `limit` distinct values of a label; later ones become `other`."""

    def __init__(self, limit: int, initial: Iterable[str] = ()) -> None:
        self._limit = limit
        self._seen = set(initial)

    def __call__(self, value: str) -> str:
        if value in self._seen or value == OTHER:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


class GatewayMetrics:
    """The gateway's collectors; implements gateway.calls.Telemetry for the servicer,
    the generator and the upstream client, and the per-call half for the interceptor."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        default_caller: str,
        max_callers: int,
        validation_fields: Sequence[str] = VALIDATION_FIELDS,
        known_models: Sequence[str] = (),
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
        self._models = BoundedLabel(max_models, [sanitize_label(m) for m in known_models])
        self._accounts = BoundedLabel(max_accounts)
        self._balance_observed_at: dict[str, float] = {}
        self._retired: set[str] = set()
        self._reasons = BoundedLabel(max_reasons)
        self._fields = frozenset(validation_fields)

        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            grpc_labels,
            registry=registry,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=registry,
        )
        self.grpc_handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of gRPC calls handled by the server.",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "stablecog_inflight_requests",
            "gRPC calls (other than health checks and reflection) being handled now.",
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "stablecog_upstream_request_duration_seconds",
            "Duration of HTTP requests to the Stablecog API, by endpoint and status class.",
            ("endpoint", "status_class"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "stablecog_upstream_errors_total",
            "Failed upstream calls, by ErrorInfo reason.",
            ("reason",),
            registry=registry,
        )
        self.credits_remaining = Gauge(
            "stablecog_credits_remaining",
            "Credits left on an account, as of its last generation "
            "(account: a short non-reversible fingerprint of the key).",
            ("account",),
            registry=registry,
        )
        self.credits_spent = Counter(
            "stablecog_credits_spent_total",
            "Credits charged by the upstream for generations.",
            ("model", "caller"),
            registry=registry,
        )
        self.images_generated = Counter(
            "stablecog_images_generated_total",
            "Images the upstream returned.",
            ("model", "caller"),
            registry=registry,
        )
        self.images_filtered = Counter(
            "stablecog_images_filtered_total",
            "Images requested but not returned (the upstream silently drops filtered outputs).",
            ("model", "caller"),
            registry=registry,
        )
        self.saved_credits = Counter(
            "stablecog_credits_saved_total",
            "Credits a call would have cost had it not been served by the cache "
            "or coalesced with an identical call in flight.",
            ("caller",),
            registry=registry,
        )
        self.cache_requests = Counter(
            "stablecog_cache_requests_total",
            "Cache decisions, by result.",
            ("result",),
            registry=registry,
        )
        self.validation_failures = Counter(
            "stablecog_validation_failures_total",
            "Requests rejected for breaking a documented constraint, by request field.",
            ("field",),
            registry=registry,
        )
        self._initialise(grpc_methods, known_models)

    def _initialise(
        self, grpc_methods: Sequence[tuple[str, str]], known_models: Sequence[str]
    ) -> None:
        for service, method in grpc_methods:
            labels = ("unary", service, method)
            self.grpc_started.labels(*labels)
            self.grpc_handling.labels(*labels)
            for code in GRPC_CODES:
                self.grpc_handled.labels(*labels, code)
        for endpoint in UPSTREAM_ENDPOINTS:
            for status_class in STATUS_CLASSES:
                self.upstream_duration.labels(endpoint, status_class)
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        for field in self._fields:
            self.validation_failures.labels(field)
        self.validation_failures.labels(OTHER)
        self.saved_credits.labels(self.default_caller)
        for model in known_models:
            for counter in (self.credits_spent, self.images_generated, self.images_filtered):
                counter.labels(self._models(sanitize_label(model)), self.default_caller)

    # --- the interceptor's half ---

    def retire_account(self, fingerprint: str, *, successor: str) -> None:
        """Drop a rotated-away key's balance series; answers still in flight for that key
        do not bring it back. `successor` (the new key) is never retired."""
        self._retired.add(fingerprint)
        self._retired.discard(successor)
        self._balance_observed_at.pop(fingerprint, None)
        with contextlib.suppress(KeyError):
            self.credits_remaining.remove(fingerprint)

    def caller_label(self, raw: str | None) -> str:
        """The bounded caller label for an `x-caller` value (None: the configured caller)."""
        value = sanitize_label(raw)
        if not value:
            return self.default_caller
        return self._callers(value)

    def started(self, service: str, method: str) -> None:
        self.grpc_started.labels("unary", service, method).inc()
        self.inflight.inc()

    def handled(self, service: str, method: str, code: str, seconds: float) -> None:
        self.inflight.dec()
        self.grpc_handled.labels("unary", service, method, code).inc()
        self.grpc_handling.labels("unary", service, method).observe(seconds)

    # --- gateway.calls.Telemetry ---

    def upstream_request(self, endpoint: str, status_class: str, seconds: float) -> None:
        self.upstream_duration.labels(endpoint, status_class).observe(seconds)

    def upstream_error(self, reason: str) -> None:
        self.upstream_errors.labels(self._reasons(sanitize_label(reason) or UNKNOWN)).inc()

    def generation(
        self,
        *,
        caller: str,
        account: str,
        model_id: str,
        credits_spent: int,
        outputs_requested: int,
        outputs_returned: int,
        remaining_credits: float | None,
        balance_observed_at: float,
    ) -> None:
        caller = self.caller_label(caller)
        model = self._models(sanitize_label(model_id) or UNKNOWN)
        self.credits_spent.labels(model, caller).inc(max(credits_spent, 0))
        self.images_generated.labels(model, caller).inc(max(outputs_returned, 0))
        self.images_filtered.labels(model, caller).inc(max(outputs_requested - outputs_returned, 0))
        fingerprint = self._accounts(sanitize_label(account) or UNKNOWN)
        # One gauge per account; the accounts past the bound would mix in `other`.
        if remaining_credits is None or fingerprint == OTHER or fingerprint in self._retired:
            return
        if balance_observed_at >= self._balance_observed_at.get(fingerprint, float("-inf")):
            self._balance_observed_at[fingerprint] = balance_observed_at
            self.credits_remaining.labels(fingerprint).set(remaining_credits)

    def credits_saved(self, *, caller: str, credits: int) -> None:
        self.saved_credits.labels(self.caller_label(caller)).inc(max(credits, 0))

    def cache_result(self, result: str) -> None:
        self.cache_requests.labels(result if result in CACHE_RESULTS else OTHER).inc()

    def validation_failure(self, field: str) -> None:
        self.validation_failures.labels(field if field in self._fields else OTHER).inc()
