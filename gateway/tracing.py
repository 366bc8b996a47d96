"""OpenTelemetry traces, off unless configured, passed explicitly (never the ambient context).

With tracing on (`OTEL_TRACES_EXPORTER=otlp` or `console`, read by gateway.config), each
call of ours gets a SERVER span, the child of the caller's span when its metadata
carries a W3C `traceparent`; the cache lookup and the upstream request are its
children, and the upstream request carries `traceparent` with the same trace id.
Spans travel in explicit `TraceParent` objects on the call, not in OpenTelemetry's
context variable. With tracing off, `Tracing.off()` answers every question with None
and the OpenTelemetry packages are not even imported.

Attributes follow the semantic conventions (`rpc.*`, `http.*`, `server.*`, `url.*`)
plus the gateway's own `stablecog.*`; never the key, and the prompt only as the log
has it (a digest unless --log-prompts).

The opentelemetry-instrumentation-grpc/-httpx/-aiohttp packages are not used: they make
spans from the ambient context and would trace the aiohttp hop under httpx twice, while
this gateway passes per-call state explicitly and needs the spans to carry what only it
knows (cache result, credits, the generating gateway of a coalesced waiter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.logs import redact

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

EXPORTERS = ("none", "otlp", "console")
EXPORT_TIMEOUT_SECONDS = 2.0
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
AttributeValue = str | bool | int | float


@dataclass(frozen=True)
class TracingSettings:
    """What gateway.config read from the standard OTEL_* variables."""

    exporter: str = "none"
    endpoint: str | None = None  # OTLP/gRPC, e.g. http://collector:4317
    service_name: str = "stablecog-gateway"
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    resource_attributes: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


@dataclass(frozen=True)
class TraceParent:
    """A span that children are made under (explicitly: the call carries it)."""

    span: Span

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str:
        return format(self.span.get_span_context().span_id, "016x")

    @property
    def context(self) -> SpanContext:
        return self.span.get_span_context()

    def traceparent(self) -> str:
        """This span as a W3C `traceparent` header value."""
        flags = format(int(self.context.trace_flags), "02x")
        return f"00-{self.trace_id}-{self.span_id}-{flags}"


class Tracing:
    """Makes spans, or nothing when tracing is off."""

    def __init__(self, tracer: Tracer | None, provider: TracerProvider | None) -> None:
        self._tracer = tracer
        self._provider = provider

    @classmethod
    def off(cls) -> Tracing:
        return cls(None, None)

    @classmethod
    def from_settings(cls, settings: TracingSettings, *, version: str) -> Tracing:
        if not settings.enabled:
            return cls.off()
        # Imported only here: a gateway with tracing off never loads the SDK.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        resource = Resource.create(
            {
                **dict(settings.resource_attributes),
                "service.name": settings.service_name,
                "service.version": version,
            }
        )
        provider = TracerProvider(resource=resource, sampler=_sampler(settings))
        exporter: SpanExporter
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            endpoint = settings.endpoint or "http://localhost:4317"
            # Short timeouts: a collector that is down must not hold up a drained shutdown.
            exporter = OTLPSpanExporter(
                endpoint=endpoint,
                insecure=not endpoint.startswith("https://"),
                timeout=EXPORT_TIMEOUT_SECONDS,
            )
        provider.add_span_processor(
            BatchSpanProcessor(exporter, export_timeout_millis=int(EXPORT_TIMEOUT_SECONDS * 1000))
        )
        return cls(provider.get_tracer("stablecog-gateway", version), provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def server_span(
        self, name: str, metadata: Mapping[str, str], attributes: Mapping[str, AttributeValue]
    ) -> TraceParent | None:
        """A SERVER span for a call, child of the caller's `traceparent` if it sent one."""
        if self._tracer is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier=dict(metadata))
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=_safe(attributes)
        )
        return TraceParent(span)

    def child(
        self,
        parent: TraceParent | None,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        links: Sequence[SpanContext] = (),
    ) -> TraceParent | None:
        """A child span of `parent` (an INTERNAL one, or a CLIENT one for a request out)."""
        if self._tracer is None or parent is None:
            return None
        from opentelemetry.trace import Link, SpanKind

        span = self._tracer.start_span(
            name,
            context=_context_of(parent),
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes=_safe(attributes or {}),
            links=[Link(context) for context in links],
        )
        return TraceParent(span)

    async def shutdown(self) -> None:
        """Export what is left and stop (the SDK blocks; run it off the event loop)."""
        if self._provider is not None:
            import asyncio

            # Bounded: the exporter gives up after its own timeout; never wait much longer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.to_thread(self._provider.shutdown), EXPORT_TIMEOUT_SECONDS * 2 + 1
                )


def link_to(span: TraceParent | None, other: SpanContext | None) -> None:
    """Link `span` to the span of the call that did its work (a coalesced waiter)."""
    if span is not None and other is not None:
        span.span.add_link(other)


def remote_context(traceparent: str | None) -> SpanContext | None:
    """The span a W3C `traceparent` value names (from another gateway), or None."""
    if not traceparent:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = get_current_span(
        TraceContextTextMapPropagator().extract(carrier={"traceparent": traceparent})
    ).get_span_context()
    return context if context.is_valid else None


def inject(span: TraceParent | None, headers: MutableMapping[str, str]) -> None:
    """Put `span` into outgoing HTTP headers as `traceparent`."""
    if span is not None:
        headers["traceparent"] = span.traceparent()


def annotate(span: TraceParent | None, attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set the attributes that are not None."""
    if span is None:
        return
    for key, value in _safe(attributes).items():
        span.span.set_attribute(key, value)


def end(span: TraceParent | None, attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set the attributes that are not None and end the span."""
    if span is None:
        return
    annotate(span, attributes)
    span.span.end()


def fail(span: TraceParent | None, description: str) -> None:
    """Mark `span` as failed (ERROR status) without ending it."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.span.set_status(Status(StatusCode.ERROR, description))


def _safe(attributes: Mapping[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    """The attributes that are set, with anything that looks like a key redacted (as every
    log line is): callers choose some values (request id, caller name)."""
    return {
        key: redact(value) if isinstance(value, str) else value
        for key, value in attributes.items()
        if value is not None
    }


def _context_of(parent: TraceParent) -> Context:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(parent.span)


def _sampler(settings: TracingSettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(settings.sampler_arg)
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(ratio),
    }[settings.sampler]
