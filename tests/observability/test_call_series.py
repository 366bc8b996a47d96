"""gateway.call_series exports what prometheus_client's Counter, Histogram and Gauge would
for the same updates: same families, labels, values, `_created` series and exemplars."""

from __future__ import annotations

import re

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from gateway.call_series import (
    GRPC_LABELS,
    HANDLED_HELP,
    HANDLING_HELP,
    INFLIGHT_HELP,
    STARTED_HELP,
    CallSeries,
    PlainCounter,
)
from gateway.metrics import GRPC_CODES, LATENCY_BUCKETS

SERVICE = "stablecog.v1.GenerationService"
KNOWN = (SERVICE, "CreateGeneration")
OTHER = (SERVICE, "Unlisted")
# (method, code, seconds, trace id): below the first bound, on a bound, between bounds,
# past the last one, with and without an exemplar, on a method named up front and not.
CALLS = [
    (KNOWN, "OK", 0.004, None),
    (KNOWN, "OK", 0.005, "a" * 32),
    (KNOWN, "INVALID_ARGUMENT", 0.3, None),
    (KNOWN, "INTERNAL", 700.0, "b" * 32),
    (OTHER, "OK", 2.0, None),
]


class Reference:
    """The same series as prometheus_client's own collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total", STARTED_HELP, GRPC_LABELS, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            HANDLED_HELP,
            (*GRPC_LABELS, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            HANDLING_HELP,
            GRPC_LABELS,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.inflight = Gauge("stablecog_inflight_requests", INFLIGHT_HELP, registry=registry)
        labels = ("unary", *KNOWN)
        self.started.labels(*labels)
        self.handling.labels(*labels)
        for code in GRPC_CODES:
            self.handled.labels(*labels, code)


def masked(text: str) -> str:
    """The exposition with the times (of `_created` series and exemplars) taken out."""
    text = re.sub(r"^(\S+_created(?:\{[^}]*\})?) \S+$", r"\1 T", text, flags=re.M)
    return re.sub(r"(# \{[^}]*\} \S+) \S+$", r"\1 T", text, flags=re.M)


@pytest.mark.parametrize("in_flight_at_scrape", [0, 2])
def test_the_exposition_is_prometheus_clients(in_flight_at_scrape: int) -> None:
    ours_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    ours = CallSeries(ours_registry, buckets=LATENCY_BUCKETS, codes=GRPC_CODES, methods=[KNOWN])
    reference = Reference(reference_registry)
    for method, code, seconds, trace_id in CALLS:
        labels = ("unary", *method)
        exemplar = {"trace_id": trace_id} if trace_id else None
        ours.of(*method).started += 1
        ours.in_flight += 1
        reference.started.labels(*labels).inc()
        reference.inflight.inc()
        ours.in_flight -= 1
        series = ours.of(*method)
        series.handled[code] = series.handled.get(code, 0.0) + 1
        series.observe(seconds, exemplar)
        reference.inflight.dec()
        reference.handled.labels(*labels, code).inc()
        reference.handling.labels(*labels).observe(seconds, exemplar)
    ours.in_flight += in_flight_at_scrape
    reference.inflight.inc(in_flight_at_scrape)

    for generate in (generate_latest, openmetrics.generate_latest):
        expected = masked(generate(reference_registry).decode())  # type: ignore[no-untyped-call]
        assert masked(generate(ours_registry).decode()) == expected  # type: ignore[no-untyped-call]
    assert 'trace_id="' + "a" * 32 in openmetrics.generate_latest(ours_registry).decode()  # type: ignore[no-untyped-call]


def test_created_series_follow_prometheus_clients_switch() -> None:
    registry = CollectorRegistry()
    CallSeries(registry, buckets=LATENCY_BUCKETS, codes=GRPC_CODES, methods=[KNOWN])
    assert b"grpc_server_started_created" in generate_latest(registry)
    prometheus_client.disable_created_metrics()
    try:
        assert b"_created" not in generate_latest(registry)
    finally:
        prometheus_client.enable_created_metrics()


def test_the_registry_knows_the_names() -> None:
    registry = CollectorRegistry()
    CallSeries(registry, buckets=LATENCY_BUCKETS, codes=GRPC_CODES, methods=[KNOWN])
    restricted = registry.restricted_registry(
        ["grpc_server_handled_total", "stablecog_inflight_requests"]
    )
    text = generate_latest(restricted).decode()  # type: ignore[arg-type]
    assert "grpc_server_handled_total{" in text and "stablecog_inflight_requests 0.0" in text
    assert "grpc_server_started_total" not in text
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("grpc_server_started_total", "again", registry=registry)


def test_a_plain_counter_exports_what_a_counter_does() -> None:
    ours_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    ours = PlainCounter(ours_registry, "stablecog_things_total", "Things.", ("result",))
    reference = Counter(
        "stablecog_things_total", "Things.", ("result",), registry=reference_registry
    )
    for result, amount in [("hit", 1.0), ("miss", 0.0), ("hit", 2.5), ("other", 1.0)]:
        ours.labels(result).inc(amount)
        reference.labels(result).inc(amount)
    for generate in (generate_latest, openmetrics.generate_latest):
        expected = masked(generate(reference_registry).decode())  # type: ignore[no-untyped-call]
        assert masked(generate(ours_registry).decode()) == expected  # type: ignore[no-untyped-call]
    prometheus_client.disable_created_metrics()
    try:
        assert b"_created" not in generate_latest(ours_registry)
    finally:
        prometheus_client.enable_created_metrics()
    restricted = ours_registry.restricted_registry(["stablecog_things_total"])
    assert 'stablecog_things_total{result="hit"} 3.5' in generate_latest(restricted).decode()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("stablecog_things_total", "again", registry=ours_registry)
    with pytest.raises(ValueError, match="takes labels"):
        ours.labels("hit", "extra")


def test_a_plain_counter_refuses_what_a_counter_refuses() -> None:
    counter = PlainCounter(CollectorRegistry(), "stablecog_more_total", "More.", ("code",))
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    counter.labels(7).inc()  # kept as text, as prometheus_client does
    assert counter.labels("7").value == 1.0
