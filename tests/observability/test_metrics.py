"""GatewayMetrics on a fresh registry: names, labels, bounds and initial label sets."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gateway.calls import Telemetry
from gateway.metrics import (
    CACHE_RESULTS,
    LATENCY_BUCKETS,
    OTHER,
    GatewayMetrics,
    sanitize_label,
)

SERVICE = "stablecog.v1.GenerationService"
METHOD = "CreateGeneration"
GRPC = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": METHOD}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def build(registry: CollectorRegistry, **kw: object) -> GatewayMetrics:
    options: dict[str, object] = {"default_caller": "svc", "max_callers": 3}
    options.update(kw)
    return GatewayMetrics(registry, **options)  # type: ignore[arg-type]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_implements_telemetry(registry: CollectorRegistry) -> None:
    telemetry: Telemetry = build(registry)
    assert telemetry is not None


def test_known_label_sets_exist_from_the_start(registry: CollectorRegistry) -> None:
    build(registry, known_models=("model-a",))
    for code in grpc.StatusCode:
        assert value(registry, "grpc_server_handled_total", **GRPC, grpc_code=code.name) == 0
    assert value(registry, "grpc_server_started_total", **GRPC) == 0
    assert value(registry, "grpc_server_handling_seconds_count", **GRPC) == 0
    for result in CACHE_RESULTS:
        assert value(registry, "stablecog_cache_requests_total", result=result) == 0
    for field in ("prompt", "num_outputs", "width", "height", "init_image_url"):
        assert value(registry, "stablecog_validation_failures_total", field=field) == 0
    assert value(registry, "stablecog_credits_saved_total", caller="svc") == 0
    for name in (
        "stablecog_credits_spent_total",
        "stablecog_images_generated_total",
        "stablecog_images_filtered_total",
    ):
        assert value(registry, name, model="model-a", caller="svc") == 0
    assert value(registry, "stablecog_inflight_requests") == 0
    assert (
        value(
            registry,
            "stablecog_upstream_request_duration_seconds_count",
            endpoint="generation_create",
            status_class="2xx",
        )
        == 0
    )


def test_grpc_call_lifecycle(registry: CollectorRegistry) -> None:
    metrics = build(registry)
    metrics.started(SERVICE, METHOD)
    assert value(registry, "stablecog_inflight_requests") == 1
    metrics.handled(SERVICE, METHOD, "UNAVAILABLE", 12.5)
    assert value(registry, "stablecog_inflight_requests") == 0
    assert value(registry, "grpc_server_started_total", **GRPC) == 1
    assert value(registry, "grpc_server_handled_total", **GRPC, grpc_code="UNAVAILABLE") == 1
    assert value(registry, "grpc_server_handling_seconds_sum", **GRPC) == 12.5
    assert value(registry, "grpc_server_handling_seconds_bucket", **GRPC, le="10.0") == 0
    assert value(registry, "grpc_server_handling_seconds_bucket", **GRPC, le="15.0") == 1


def test_latency_buckets_fit_generations_of_minutes() -> None:
    assert tuple(sorted(LATENCY_BUCKETS)) == LATENCY_BUCKETS
    assert LATENCY_BUCKETS[0] <= 0.01  # cache hits
    assert LATENCY_BUCKETS[-1] >= 600  # the default upstream timeout
    assert sum(1 for b in LATENCY_BUCKETS if 1 <= b <= 300) >= 10


def test_generation_counts_credits_images_and_filtered(registry: CollectorRegistry) -> None:
    metrics = build(registry)
    metrics.generation(
        caller="svc",
        account="0123456789ab",
        model_id="model-a",
        credits_spent=4,
        outputs_requested=4,
        outputs_returned=3,
        remaining_credits=96,
        balance_observed_at=100.0,
    )
    labels = {"model": "model-a", "caller": "svc"}
    assert value(registry, "stablecog_credits_spent_total", **labels) == 4
    assert value(registry, "stablecog_images_generated_total", **labels) == 3
    assert value(registry, "stablecog_images_filtered_total", **labels) == 1
    assert value(registry, "stablecog_credits_remaining", account="0123456789ab") == 96
    metrics.credits_saved(caller="svc", credits=2)
    assert value(registry, "stablecog_credits_saved_total", caller="svc") == 2


def test_balance_from_an_earlier_call_never_overwrites_a_newer_one(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry)
    common = {"caller": "svc", "account": "acct", "model_id": "m", "outputs_requested": 1}
    # The later-started call answers first (balance 90); the earlier one answers last (95).
    metrics.generation(
        **common,
        credits_spent=1,
        outputs_returned=1,
        remaining_credits=90,
        balance_observed_at=200.0,
    )
    metrics.generation(
        **common,
        credits_spent=1,
        outputs_returned=1,
        remaining_credits=95,
        balance_observed_at=100.0,
    )
    assert value(registry, "stablecog_credits_remaining", account="acct") == 90
    # An unreadable answer still counts what was charged, and leaves the balance alone.
    metrics.generation(
        **common,
        credits_spent=2,
        outputs_returned=0,
        remaining_credits=None,
        balance_observed_at=300.0,
    )
    assert value(registry, "stablecog_credits_spent_total", model="m", caller="svc") == 4
    assert value(registry, "stablecog_credits_remaining", account="acct") == 90


def test_upstream_requests_and_errors(registry: CollectorRegistry) -> None:
    metrics = build(registry)
    metrics.upstream_request("generation_create", "5xx", 0.3)
    metrics.upstream_error("UPSTREAM_HTTP_502")
    assert (
        value(
            registry,
            "stablecog_upstream_request_duration_seconds_count",
            endpoint="generation_create",
            status_class="5xx",
        )
        == 1
    )
    assert value(registry, "stablecog_upstream_errors_total", reason="UPSTREAM_HTTP_502") == 1


def test_callers_are_sanitized_and_bounded(registry: CollectorRegistry) -> None:
    metrics = build(registry, max_callers=2)
    assert metrics.caller_label(None) == "svc"
    assert metrics.caller_label("  ") == "svc"
    assert metrics.caller_label("team a/ü") == "team_a__"
    assert metrics.caller_label("x" * 200) == "x" * 63
    # Two distinct callers were admitted; the next new one is `other`, known ones stay.
    assert metrics.caller_label("late") == OTHER
    assert metrics.caller_label("team a/ü") == "team_a__"
    assert metrics.caller_label("svc") == "svc"
    # Telemetry from the servicer passes labels through unchanged.
    metrics.credits_saved(caller="late", credits=1)
    assert value(registry, "stablecog_credits_saved_total", caller=OTHER) == 1


def test_sanitize_is_idempotent() -> None:
    for raw in ("a b", "é" * 70, "ok-1.2:3_x", "{}\"'\n"):
        once = sanitize_label(raw)
        assert sanitize_label(once) == once
        assert len(once) <= 63


def test_other_unbounded_labels_are_bounded(registry: CollectorRegistry) -> None:
    metrics = build(registry, max_models=2, max_accounts=1, max_reasons=1)
    for i in range(4):
        metrics.upstream_error(f"REASON_{i}")
        metrics.generation(
            caller="svc",
            account=f"acct{i}",
            model_id=f"model-{i}",
            credits_spent=1,
            outputs_requested=1,
            outputs_returned=1,
            remaining_credits=10 - i,
            balance_observed_at=100.0 + i,
        )
    assert value(registry, "stablecog_upstream_errors_total", reason="REASON_0") == 1
    assert value(registry, "stablecog_upstream_errors_total", reason=OTHER) == 3
    assert value(registry, "stablecog_credits_spent_total", model=OTHER, caller="svc") == 2
    assert value(registry, "stablecog_credits_remaining", account="acct0") == 10
    # A gauge mixing several accounts would mean nothing: accounts past the bound are dropped.
    assert value(registry, "stablecog_credits_remaining", account=OTHER) is None


def test_unknown_validation_fields_and_cache_results_count_as_other(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry)
    metrics.validation_failure("width")
    metrics.validation_failure("no_such_field")
    metrics.cache_result("hit")
    metrics.cache_result("weird")
    assert value(registry, "stablecog_validation_failures_total", field="width") == 1
    assert value(registry, "stablecog_validation_failures_total", field=OTHER) == 1
    assert value(registry, "stablecog_cache_requests_total", result="hit") == 1
    assert value(registry, "stablecog_cache_requests_total", result=OTHER) == 1


def test_nothing_lands_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = {m.name for m in REGISTRY.collect()}
    build(CollectorRegistry())
    build(CollectorRegistry())  # a second instance: no duplicate-registration error
    assert {m.name for m in REGISTRY.collect()} == before
