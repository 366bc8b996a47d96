"""Traces through a real OTLP/gRPC receiver on loopback: the caller's trace continues in
the gateway, the cache and the upstream request, and reaches the emulator's headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from emulator.server import Emulator
from gateway.app import GatewayApp
from gateway.config import ConfigError, load_settings
from gateway.tracing import TracingSettings
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import CREATE, call, eventually, request, upstream_requests

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER_SPAN = "stablecog.v1.GenerationService/CreateGeneration"


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    spans: list[tuple[dict[str, Any], trace_pb2.Span]] = field(default_factory=list)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[trace_pb2.Span]:
        return [span for _, span in self.spans if span.name == name]


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    collected = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collected, port
    finally:
        await server.stop(grace=None)


async def traced_gateway(make_gateway: GatewayFactory, port: int, **kw: Any) -> GatewayApp:
    settings = TracingSettings(
        exporter="otlp",
        endpoint=f"http://127.0.0.1:{port}",
        service_name="gateway-under-test",
        resource_attributes=(("deployment.environment", "test"),),
    )
    return await make_gateway(tracing=settings, **kw)


async def test_a_caller_s_trace_continues_through_cache_and_upstream(
    make_gateway: GatewayFactory,
    emulator: Emulator,
    receiver: tuple[Receiver, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collected, port = receiver
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await traced_gateway(make_gateway, port)
    await call(app, request(seed=7), metadata=[("traceparent", TRACEPARENT)])
    await app.stop(grace=1.0)  # flushes the exporter

    await eventually(lambda: len(collected.named(SERVER_SPAN)) == 1)
    (server,) = collected.named(SERVER_SPAN)
    assert server.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert server.kind == trace_pb2.Span.SPAN_KIND_SERVER
    server_attributes = attributes(server)
    assert server_attributes["rpc.system"] == "grpc"
    assert server_attributes["rpc.service"] == "stablecog.v1.GenerationService"
    assert server_attributes["rpc.method"] == "CreateGeneration"
    assert server_attributes["rpc.grpc.status_code"] == 0
    assert server_attributes["stablecog.cache_result"] == "miss"
    assert server_attributes["stablecog.credits_spent"] == 2
    assert server_attributes["stablecog.model_id"]
    assert "stablecog.prompt" not in server_attributes  # a digest only, as in the log
    assert len(server_attributes["stablecog.prompt_sha256"]) == 16

    children = [s for _, s in collected.spans if s.parent_span_id == server.span_id]
    names = sorted(s.name for s in children)
    assert names == ["POST", "cache lookup"]
    (upstream,) = [s for s in children if s.name == "POST"]
    assert upstream.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    upstream_attributes = attributes(upstream)
    assert upstream_attributes["http.request.method"] == "POST"
    assert upstream_attributes["http.response.status_code"] == 200
    assert upstream_attributes["server.address"] == "127.0.0.1"
    assert upstream_attributes["url.full"].endswith(CREATE)

    # The upstream request carried the trace, with the upstream span as its parent.
    (sent,) = upstream_requests(emulator)
    assert sent.traceparent == f"00-{CALLER_TRACE}-{upstream.span_id.hex()}-01"

    resource = collected.spans[0][0]
    assert resource["service.name"] == "gateway-under-test"
    assert resource["deployment.environment"] == "test"

    # The access line names the trace.
    lines = [vars(r) for r in caplog.records if r.name == "gateway.access"]
    assert [line["trace_id"] for line in lines] == [CALLER_TRACE]

    # Never the key, anywhere in what was exported.
    exported = json.dumps([str(s) for _, s in collected.spans])
    assert ACCOUNT_KEY not in exported and ACCOUNT_KEY[3:] not in exported


async def test_a_hit_has_no_upstream_child_and_a_waiter_links_to_the_generating_call(
    make_gateway: GatewayFactory, emulator: Emulator, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    app = await traced_gateway(make_gateway, port)
    emulator.set_latency(0.5)
    first = asyncio.ensure_future(call(app, request(seed=9)))
    await emulator.wait_for_requests(CREATE, 1)
    second = asyncio.ensure_future(call(app, request(seed=9)))
    (_, a), (_, b) = await asyncio.gather(first, second)
    _, c = await call(app, request(seed=9))
    assert (a, b, c) == ("miss", "coalesced", "hit")
    await app.stop(grace=1.0)

    await eventually(lambda: len(collected.named(SERVER_SPAN)) == 3)
    by_result = {attributes(s)["stablecog.cache_result"]: s for s in collected.named(SERVER_SPAN)}
    children_of = {
        result: sorted(s.name for _, s in collected.spans if s.parent_span_id == span.span_id)
        for result, span in by_result.items()
    }
    assert children_of == {
        "miss": ["POST", "cache lookup"],
        "coalesced": ["cache lookup"],
        "hit": ["cache lookup"],
    }
    waiter = by_result["coalesced"]
    assert [link.span_id for link in waiter.links] == [by_result["miss"].span_id]
    assert len(collected.named("POST")) == 1


async def test_a_waiter_on_another_gateway_records_which_gateway_generated(
    make_gateway: GatewayFactory,
    emulator: Emulator,
    receiver: tuple[Receiver, int],
    redis_server: Any,
) -> None:
    collected, port = receiver
    apps = [
        await traced_gateway(make_gateway, port, cache="redis", redis_url=redis_server.url)
        for _ in range(2)
    ]
    emulator.set_latency(0.8)
    leader = asyncio.ensure_future(call(apps[0], request(seed=11)))
    await emulator.wait_for_requests(CREATE, 1)
    waiter = asyncio.ensure_future(call(apps[1], request(seed=11)))
    (_, a), (_, b) = await asyncio.gather(leader, waiter)
    assert (a, b) == ("miss", "coalesced")
    for app in apps:
        await app.stop(grace=1.0)

    await eventually(lambda: len(collected.named(SERVER_SPAN)) == 2)
    by_result = {attributes(s)["stablecog.cache_result"]: s for s in collected.named(SERVER_SPAN)}
    waiting = by_result["coalesced"]
    assert attributes(waiting)["stablecog.generated_by"]
    assert [link.span_id for link in waiting.links] == [by_result["miss"].span_id]


async def test_nothing_is_exported_when_tracing_is_off(
    make_gateway: GatewayFactory, emulator: Emulator, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    # A collector endpoint alone does not turn tracing on: only an exporter does.
    settings = load_settings([], {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert settings.tracing.endpoint == f"http://127.0.0.1:{port}"
    app = await make_gateway(tracing=settings.tracing)
    assert not app.tracing.enabled
    await call(app, request(seed=3), metadata=[("traceparent", TRACEPARENT)])
    await app.stop(grace=1.0)
    (sent,) = upstream_requests(emulator)
    assert sent.traceparent is None
    assert collected.spans == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ],
)
def test_a_bad_otel_variable_is_refused_by_name(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings([], {variable: value})


def test_the_standard_variables_configure_tracing() -> None:
    settings = load_settings(
        [],
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_SERVICE_NAME": "svc",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=p%201,team=x",
        },
    ).tracing
    assert settings == TracingSettings(
        exporter="otlp",
        endpoint="http://collector:4317",
        service_name="svc",
        sampler="parentbased_traceidratio",
        sampler_arg=0.25,
        resource_attributes=(("k8s.pod.name", "p 1"), ("team", "x")),
    )


async def test_latency_carries_the_trace_id_as_an_exemplar_in_openmetrics(
    make_gateway: GatewayFactory, emulator: Emulator, receiver: tuple[Receiver, int]
) -> None:
    import httpx

    _, port = receiver
    app = await traced_gateway(make_gateway, port)
    await call(app, request(seed=5), metadata=[("traceparent", TRACEPARENT)])
    # The call is recorded just after its caller has the answer.
    labels = {"grpc_type": "unary", "grpc_service": SERVER_SPAN.split("/")[0]}
    labels["grpc_method"] = "CreateGeneration"
    await eventually(
        lambda: app.registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 1
    )
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    async with httpx.AsyncClient() as client:

        async def scrape(accept: str) -> str:
            return (await client.get(url, headers={"Accept": accept})).text

        openmetrics = await scrape("application/openmetrics-text; version=1.0.0")
        classic = await scrape("text/plain")
    await app.stop(grace=1.0)  # while the receiver is still there to take the spans
    exemplars = [
        line
        for line in openmetrics.splitlines()
        if line.startswith("grpc_server_handling_seconds_bucket") and "# {" in line
    ]
    assert exemplars and all(f'trace_id="{CALLER_TRACE}"' in line for line in exemplars)
    assert "# {" not in classic and "grpc_server_handling_seconds_bucket" in classic


def test_otel_sdk_disabled_wins() -> None:
    settings = load_settings(
        [], {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    ).tracing
    assert not settings.enabled


async def test_a_forwarded_key_never_reaches_a_span(
    make_gateway: GatewayFactory, emulator: Emulator, receiver: tuple[Receiver, int]
) -> None:
    collected, port = receiver
    app = await traced_gateway(make_gateway, port, api_key=None)
    metadata = [
        ("authorization", f"Bearer {ACCOUNT_KEY}"),
        ("x-request-id", ACCOUNT_KEY),  # callers choose these values
        ("x-caller", ACCOUNT_KEY),
        ("traceparent", TRACEPARENT),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        from tests.fixtures import Stub

        rpc = Stub(channel).CreateGeneration(request(seed=12), metadata=metadata)
        await rpc
        echoed = dict(await rpc.trailing_metadata())["x-request-id"]
    await app.stop(grace=1.0)
    assert echoed != ACCOUNT_KEY  # a key-like request id is replaced, not echoed
    await eventually(lambda: len(collected.named(SERVER_SPAN)) == 1)
    exported = json.dumps([str(s) for _, s in collected.spans])
    assert ACCOUNT_KEY not in exported and ACCOUNT_KEY[3:20] not in exported


async def test_hits_are_not_replayed_while_tracing(
    make_gateway: GatewayFactory, receiver: tuple[Receiver, int]
) -> None:
    """A replayed call would have no span: with tracing on, every hit runs in full."""
    collected, port = receiver
    app = await traced_gateway(make_gateway, port, cache="memory")
    results = [(await call(app, request(seed=8)))[1] for _ in range(3)]
    await app.stop(grace=1.0)  # flushes the exporter
    assert results == ["miss", "hit", "hit"]
    await eventually(lambda: len(collected.named(SERVER_SPAN)) == 3)
    spans = collected.named(SERVER_SPAN)
    assert sorted(attributes(s)["stablecog.cache_result"] for s in spans) == [
        "hit",
        "hit",
        "miss",
    ]
