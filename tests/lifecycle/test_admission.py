"""Admission: past --max-concurrent-calls calls are shed with details and counted, and
health checks are never shed (a saturated sidecar must not fail its probes)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2_grpc
from tests.conftest import GatewayFactory
from tests.fixtures import CREATE, request, upstream_calls
from tests.status import rich_error

GRPC = {
    "grpc_type": "unary",
    "grpc_service": "stablecog.v1.GenerationService",
    "grpc_method": "CreateGeneration",
}


async def test_saturation_sheds_calls_with_details_and_never_health_checks(
    make_gateway: GatewayFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await make_gateway(max_concurrent_calls=50)
    emulator.set_latency(3.0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        held = [
            asyncio.ensure_future(stub.CreateGeneration(request(prompt=f"slow {i}"), timeout=30))
            for i in range(50)
        ]
        await emulator.wait_for_requests(CREATE, 50)
        extra = [
            asyncio.ensure_future(stub.CreateGeneration(request(prompt=f"more {i}"), timeout=30))
            for i in range(150)
        ]
        shed = await asyncio.gather(*extra, return_exceptions=True)
        # Saturated: every probe still answers, and quickly.
        for service in ("", "stablecog.v1.GenerationService"):
            for _ in range(5):
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=0.1
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answered = await asyncio.gather(*held)
    assert len(answered) == 50 and all(len(r.outputs) == 2 for r in answered)
    assert all(isinstance(e, grpc.aio.AioRpcError) for e in shed)
    errors = [rich_error(e) for e in shed if isinstance(e, grpc.aio.AioRpcError)]
    assert {e.code for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(e.info is not None and e.info.reason == "GATEWAY_OVERLOADED" for e in errors)
    assert all(e.retry_delay is not None and e.retry_delay > 0 for e in errors)
    assert upstream_calls(emulator) == 50
    handled = app.registry.get_sample_value(
        "grpc_server_handled_total", {**GRPC, "grpc_code": "RESOURCE_EXHAUSTED"}
    )
    assert handled == 150
    shed_lines = [
        vars(r)
        for r in caplog.records
        if r.name == "gateway.access" and vars(r).get("error_reason") == "GATEWAY_OVERLOADED"
    ]
    assert len(shed_lines) == 150
