"""The series every call updates, counted in plain numbers and exported when scraped.

`grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_handling_seconds`
and `stablecog_inflight_requests` change on every call, five updates a call. A
prometheus_client child takes a lock and runs its checks on each (~0.6 us), which made
the metrics a fifth of what the gateway's own code spends on a cache hit (BENCHMARKS.md).
Here an update is an addition on an object found once per method. They are written by
the event loop and read by the scrape, which runs on the same loop (gateway.metrics_server),
so nothing needs a lock (a scrape from another thread would read each number whole, but
not all of them at one instant). The exposition is what prometheus_client's Counter, Histogram and
Gauge write for the same updates, `_created` and exemplars included
(tests/observability/test_call_series.py compares the two). One difference: a method not
named up front (none of the contract's) gets its histogram at its first call, not at
its first answer.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
STARTED_HELP = "RPCs started on the server."
HANDLED_HELP = "RPCs completed on the server, regardless of success or failure."
HANDLING_HELP = "Response latency (seconds) of gRPC calls handled by the server."
INFLIGHT_HELP = "gRPC calls (other than health checks and reflection) being handled now."


def _created_series_on() -> bool:
    """prometheus_client's own switch for `_created` series (set from
    PROMETHEUS_DISABLE_CREATED_SERIES at its import, and by disable_created_metrics())."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


def _counting_families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
    """Started, handled and handling, empty."""
    return (
        CounterMetricFamily("grpc_server_started", STARTED_HELP, labels=GRPC_LABELS),
        CounterMetricFamily(
            "grpc_server_handled", HANDLED_HELP, labels=(*GRPC_LABELS, "grpc_code")
        ),
        HistogramMetricFamily("grpc_server_handling_seconds", HANDLING_HELP, labels=GRPC_LABELS),
    )


class MethodSeries:
    """One method's started and handled counts and its latency histogram."""

    __slots__ = ("_bounds", "buckets", "created", "exemplars", "handled", "started", "sum")

    def __init__(self, bounds: Sequence[float], codes: Sequence[str], created: float) -> None:
        self._bounds = bounds
        self.started = 0.0
        self.handled: dict[str, float] = dict.fromkeys(codes, 0.0)
        # Per bucket (not cumulative), the last one +Inf's.
        self.buckets = [0.0] * (len(bounds) + 1)
        self.exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = created

    def observe(self, seconds: float, exemplar: Mapping[str, str] | None = None) -> None:
        # The first bound >= seconds, as prometheus_client's Histogram.observe.
        index = bisect.bisect_left(self._bounds, seconds)
        self.buckets[index] += 1
        self.sum += seconds
        if exemplar:
            self.exemplars[index] = Exemplar(dict(exemplar), seconds, time.time())


class CallSeries:
    """The collector of those four series, registered on `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        buckets: Sequence[float],
        codes: Sequence[str],
        methods: Sequence[tuple[str, str]],
    ) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._les = (*(floatToGoString(b) for b in self._bounds), "+Inf")  # type: ignore[no-untyped-call]
        self._codes = tuple(codes)
        self._series: dict[tuple[str, str], MethodSeries] = {}
        self.in_flight = 0.0
        # The contract's methods with every code, so rate() works from the first scrape.
        for service, method in methods:
            self._series[(service, method)] = MethodSeries(self._bounds, self._codes, time.time())
        registry.register(self)

    def of(self, service: str, method: str) -> MethodSeries:
        """The series of one method (another method's made the first time it is asked
        for, its codes as they come)."""
        series = self._series.get((service, method))
        if series is None:
            series = self._series[(service, method)] = MethodSeries(self._bounds, (), time.time())
        return series

    def describe(self) -> Iterator[Metric]:
        """The families without samples: the registry learns their names (duplicates are
        refused, and a scrape restricted with `name[]` finds them)."""
        yield from _counting_families()
        yield GaugeMetricFamily("stablecog_inflight_requests", INFLIGHT_HELP, labels=())

    def collect(self) -> Iterator[Metric]:
        created = _created_series_on()
        started, handled, handling = _counting_families()
        for (service, method), series in list(self._series.items()):
            labels = ("unary", service, method)
            when = series.created if created else None
            started.add_metric(labels, series.started, created=when)
            for code, count in list(series.handled.items()):
                handled.add_metric((*labels, code), count, created=when)
            cumulative, total = [], 0.0
            for le, count, exemplar in zip(
                self._les, series.buckets, series.exemplars, strict=True
            ):
                total += count
                cumulative.append((le, total, exemplar) if exemplar else (le, total))
            handling.add_metric(labels, cumulative, series.sum)
            if created:
                handling.samples.append(
                    Sample(
                        "grpc_server_handling_seconds_created",
                        dict(zip(GRPC_LABELS, labels, strict=True)),
                        series.created,
                    )
                )
        yield started
        yield handled
        yield handling
        yield GaugeMetricFamily("stablecog_inflight_requests", INFLIGHT_HELP, self.in_flight)


class PlainCount:
    """One labelled child of a `PlainCounter`."""

    __slots__ = ("created", "value")

    def __init__(self, created: float) -> None:
        self.value = 0.0
        self.created = created

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount`; a counter only goes up (as prometheus_client's)."""
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class PlainCounter:
    """A labelled counter in plain numbers, exported when scraped as prometheus_client's
    Counter exports it (`_total` and `_created`), for a counter every hit or generation
    updates (cache results, credits saved and spent, images): `labels(...)` is looked up
    once by the caller and kept."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], PlainCount] = {}
        registry.register(self)

    def labels(self, *values: object) -> PlainCount:
        """The child for these label values (as text, as prometheus_client keeps them)."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = PlainCount(time.time())
        return child

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        created = _created_series_on()
        family = self._family()
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value, created=child.created if created else None)
        yield family
