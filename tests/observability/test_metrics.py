"""GatewayMetrics on a fresh registry: names, labels, bounds and initial label sets."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gateway import events
from gateway.balance import Balance
from gateway.events import (
    CacheBackendFailed,
    CacheDecided,
    CallHandled,
    CallStarted,
    CreditsSaved,
    CreditsSpent,
    UpstreamFailed,
    UpstreamRequestEnded,
    ValidationFailed,
)
from gateway.labels import OTHER, sanitize_label
from gateway.metrics import (
    CACHE_RESULTS,
    LATENCY_BUCKETS,
    SPENT_MEMO,
    UPSTREAM_REASONS,
    GatewayMetrics,
)
from gateway.upstream_defaults import KNOWN_MODEL_IDS

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


def spent(
    *,
    caller: str = "svc",
    account: str = "acct",
    model_id: str = "m",
    credits: int = 1,
    outputs_requested: int = 1,
    outputs_returned: int = 1,
    balance: Balance | None = None,
) -> CreditsSpent:
    return CreditsSpent(
        caller=caller,
        account=account,
        model_id=model_id,
        credits=credits,
        outputs_requested=outputs_requested,
        outputs_returned=outputs_returned,
        balance=balance,
    )


def test_every_event_type_has_a_handler(registry: CollectorRegistry) -> None:
    """Derived from gateway.events: a new event type fails here until metrics handle it."""
    defined = {
        obj
        for obj in vars(events).values()
        if isinstance(obj, type) and issubclass(obj, events.Event) and obj is not events.Event
    }
    assert defined == set(GatewayMetrics._handlers)


def test_cache_results_are_the_contract_s() -> None:
    from gateway._gen.stablecog.v1 import generation_pb2

    names = {
        generation_pb2.CacheResult.Name(v).removeprefix("CACHE_RESULT_").lower()
        for v in generation_pb2.CacheResult.values()
    }
    # What a call's response says, nothing else (a backend failure is counted apart).
    assert set(CACHE_RESULTS) == names - {"unspecified"}


def test_known_label_sets_exist_from_the_start(registry: CollectorRegistry) -> None:
    """So rate() sees a first increment: a series born at 1 has no earlier sample."""
    build(registry, known_models=("model-a",))
    for reason in UPSTREAM_REASONS:
        assert value(registry, "stablecog_upstream_errors_total", reason=reason) == 0
    for reason in ("UPSTREAM_UNREACHABLE", "UPSTREAM_CONNECTION_LOST", "UPSTREAM_HTTP_502"):
        assert reason in UPSTREAM_REASONS
    for code in grpc.StatusCode:
        assert value(registry, "grpc_server_handled_total", **GRPC, grpc_code=code.name) == 0
    assert value(registry, "grpc_server_started_total", **GRPC) == 0
    assert value(registry, "grpc_server_handling_seconds_count", **GRPC) == 0
    for result in CACHE_RESULTS:
        assert value(registry, "stablecog_cache_requests_total", result=result) == 0
    for operation in ("lookup", "store"):
        assert value(registry, "stablecog_cache_backend_errors_total", operation=operation) == 0
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


def test_production_defaults_initialise_the_known_models(registry: CollectorRegistry) -> None:
    build(registry)
    for model in KNOWN_MODEL_IDS:
        labels = {"model": model, "caller": "svc"}
        assert value(registry, "stablecog_credits_spent_total", **labels) == 0
        assert value(registry, "stablecog_images_generated_total", **labels) == 0


def test_grpc_call_lifecycle(registry: CollectorRegistry) -> None:
    metrics = build(registry)
    metrics.emit(CallStarted(SERVICE, METHOD))
    assert value(registry, "stablecog_inflight_requests") == 1
    metrics.emit(CallHandled(SERVICE, METHOD, "UNAVAILABLE", 12.5))
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
    metrics.emit(
        spent(
            account="0123456789ab",
            model_id="model-a",
            credits=4,
            outputs_requested=4,
            outputs_returned=3,
            balance=Balance(96, observed_at=100.0),
        )
    )
    labels = {"model": "model-a", "caller": "svc"}
    assert value(registry, "stablecog_credits_spent_total", **labels) == 4
    assert value(registry, "stablecog_images_generated_total", **labels) == 3
    assert value(registry, "stablecog_images_filtered_total", **labels) == 1
    assert value(registry, "stablecog_credits_remaining", account="0123456789ab") == 96
    metrics.emit(CreditsSaved("svc", 2))
    assert value(registry, "stablecog_credits_saved_total", caller="svc") == 2


def test_balance_from_an_earlier_call_never_overwrites_a_newer_one(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry)
    # The later-started call answers first (balance 90); the earlier one answers last (95).
    metrics.emit(spent(balance=Balance(90, observed_at=200.0)))
    metrics.emit(spent(balance=Balance(95, observed_at=100.0)))
    assert value(registry, "stablecog_credits_remaining", account="acct") == 90
    # An unreadable answer still counts what was charged, and leaves the balance alone.
    metrics.emit(spent(credits=2, outputs_returned=0, balance=None))
    assert value(registry, "stablecog_credits_spent_total", model="m", caller="svc") == 4
    assert value(registry, "stablecog_credits_remaining", account="acct") == 90


def test_upstream_requests_and_errors(registry: CollectorRegistry) -> None:
    metrics = build(registry)
    metrics.emit(UpstreamRequestEnded("generation_create", "5xx", 0.3))
    metrics.emit(UpstreamFailed("UPSTREAM_HTTP_502"))
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
    metrics.emit(CreditsSaved("late", 1))
    assert value(registry, "stablecog_credits_saved_total", caller=OTHER) == 1


def test_sanitize_is_idempotent() -> None:
    for raw in ("a b", "é" * 70, "ok-1.2:3_x", "{}\"'\n"):
        once = sanitize_label(raw)
        assert sanitize_label(once) == once
        assert len(once) <= 63


def test_other_unbounded_labels_are_bounded(registry: CollectorRegistry) -> None:
    metrics = build(registry, max_models=2, max_accounts=1, max_reasons=1)
    for i in range(4):
        metrics.emit(UpstreamFailed(f"REASON_{i}"))
        metrics.emit(
            spent(
                account=f"acct{i}",
                model_id=f"model-{i}",
                balance=Balance(10 - i, observed_at=100.0 + i),
            )
        )
    assert value(registry, "stablecog_upstream_errors_total", reason="REASON_0") == 1
    assert value(registry, "stablecog_upstream_errors_total", reason=OTHER) == 3
    assert value(registry, "stablecog_credits_spent_total", model=OTHER, caller="svc") == 2
    assert value(registry, "stablecog_credits_remaining", account="acct0") == 10
    # A gauge mixing several accounts would mean nothing: accounts past the bound are dropped.
    assert value(registry, "stablecog_credits_remaining", account=OTHER) is None


def test_the_per_generation_memos_stay_bounded_and_count_as_without_them(
    registry: CollectorRegistry,
) -> None:
    """The raw (model id, caller) and account memos are cleared when full; a value seen
    before and after a clearing keeps counting into its own series."""
    metrics = build(registry, max_models=2, max_accounts=2)
    for i in range(SPENT_MEMO + 10):
        metrics.emit(spent(model_id=f"raw-{i}", account=f"acct-{i}", balance=None))
        metrics.emit(spent(model_id="model-a", account="acct-a", balance=Balance(i, i)))
    assert len(metrics._spent) <= SPENT_MEMO
    assert len(metrics._account_labels) <= SPENT_MEMO
    # raw-0 and model-a took the two free model labels; every later raw id is `other`.
    assert value(registry, "stablecog_credits_spent_total", model="raw-0", caller="svc") == 1
    assert value(registry, "stablecog_credits_spent_total", model="model-a", caller="svc") == (
        SPENT_MEMO + 10
    )
    assert value(registry, "stablecog_credits_spent_total", model=OTHER, caller="svc") == (
        SPENT_MEMO + 9
    )
    assert value(registry, "stablecog_credits_remaining", account="acct-a") == SPENT_MEMO + 9


def test_the_current_key_keeps_its_gauge_after_more_rotations_than_the_bound(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry, max_accounts=2)
    metrics.emit(spent(account="k0", balance=Balance(100, observed_at=0.0)))
    for i in range(1, 6):
        metrics.retire_account(f"k{i - 1}", successor=f"k{i}")
        # A late answer for the retired key neither brings its series back nor takes a place.
        metrics.emit(spent(account=f"k{i - 1}", balance=Balance(1, observed_at=i)))
        metrics.emit(spent(account=f"k{i}", balance=Balance(100 - i, observed_at=i)))
        assert value(registry, "stablecog_credits_remaining", account=f"k{i}") == 100 - i
        assert value(registry, "stablecog_credits_remaining", account=f"k{i - 1}") is None
    assert value(registry, "stablecog_credits_remaining", account=OTHER) is None


def test_callers_on_one_model_keep_their_own_series_across_a_memo_clearing(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry, max_accounts=1)
    for i in range(SPENT_MEMO + 5):
        metrics.emit(spent(caller="svc", model_id="m", credits=1, account="acct"))
        metrics.emit(spent(caller="batch", model_id="m", credits=2, account="late"))
        metrics.emit(spent(caller="svc", model_id=f"raw-{i}", account="acct"))
    assert value(registry, "stablecog_credits_spent_total", model="m", caller="svc") == (
        SPENT_MEMO + 5
    )
    assert value(registry, "stablecog_credits_spent_total", model="m", caller="batch") == 2 * (
        SPENT_MEMO + 5
    )
    # `late` came after the one account slot was taken: no gauge under its own name.
    metrics.emit(spent(account="late", balance=Balance(5, observed_at=1.0)))
    metrics.emit(spent(account="acct", balance=Balance(7, observed_at=1.0)))
    assert value(registry, "stablecog_credits_remaining", account="late") is None
    assert value(registry, "stablecog_credits_remaining", account="acct") == 7


def test_an_account_without_a_balance_still_takes_its_place_in_the_bound(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry, max_accounts=1)
    metrics.emit(spent(account="first", balance=None))  # an unreadable answer
    metrics.emit(spent(account="second", balance=Balance(5, observed_at=1.0)))
    assert value(registry, "stablecog_credits_remaining", account="second") is None
    metrics.emit(spent(account="first", balance=Balance(9, observed_at=2.0)))
    assert value(registry, "stablecog_credits_remaining", account="first") == 9


def test_a_retired_account_s_balance_stays_gone_until_it_is_current_again(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry)
    metrics.emit(spent(account="old", balance=Balance(50, observed_at=1.0)))
    metrics.retire_account("old", successor="new")
    assert value(registry, "stablecog_credits_remaining", account="old") is None
    # An answer still in flight for the old key does not bring its series back.
    metrics.emit(spent(account="old", balance=Balance(49, observed_at=2.0)))
    assert value(registry, "stablecog_credits_remaining", account="old") is None
    metrics.emit(spent(account="new", balance=Balance(70, observed_at=3.0)))
    # Rotated back: the old key is current again and its gauge is made anew.
    metrics.retire_account("new", successor="old")
    metrics.emit(spent(account="old", balance=Balance(48, observed_at=4.0)))
    assert value(registry, "stablecog_credits_remaining", account="old") == 48
    assert value(registry, "stablecog_credits_remaining", account="new") is None


def test_unknown_validation_fields_and_cache_results_count_as_other(
    registry: CollectorRegistry,
) -> None:
    metrics = build(registry)
    metrics.emit(ValidationFailed("width"))
    metrics.emit(ValidationFailed("no_such_field"))
    metrics.emit(CacheDecided("hit"))
    metrics.emit(CacheDecided("weird"))
    metrics.emit(CacheBackendFailed("lookup"))
    metrics.emit(CacheBackendFailed("weird"))
    assert value(registry, "stablecog_validation_failures_total", field="width") == 1
    assert value(registry, "stablecog_validation_failures_total", field=OTHER) == 1
    assert value(registry, "stablecog_cache_requests_total", result="hit") == 1
    assert value(registry, "stablecog_cache_requests_total", result=OTHER) == 1
    assert value(registry, "stablecog_cache_backend_errors_total", operation="lookup") == 1
    assert value(registry, "stablecog_cache_backend_errors_total", operation=OTHER) == 1


def test_nothing_lands_on_the_global_registry() -> None:
    from prometheus_client import REGISTRY

    before = {m.name for m in REGISTRY.collect()}
    build(CollectorRegistry())
    build(CollectorRegistry())  # a second instance: no duplicate-registration error
    assert {m.name for m in REGISTRY.collect()} == before
