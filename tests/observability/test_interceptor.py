"""The telemetry interceptor through a real gateway: request ids, codes, callers, the access
log, exclusions, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2_grpc
from gateway.account import account_fingerprint
from gateway.app import GatewayApp
from gateway.call import prompt_digest
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import eventually, request_with

SERVICE = "stablecog.v1.GenerationService"
GRPC = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "CreateGeneration"}
PROMPT = "a secret garden of glass, observed"


request = request_with(prompt=PROMPT)


def sample(app: GatewayApp, name: str, **labels: str) -> float:
    found = app.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def handled(app: GatewayApp, code: str) -> float:
    return sample(app, "grpc_server_handled_total", **GRPC, grpc_code=code)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records if r.name == "gateway.access"]


@pytest.fixture
async def channel_to(make_gateway: GatewayFactory) -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    async def open_(app: GatewayApp) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        channels.append(ch)
        return ch

    yield open_
    for ch in channels:
        await ch.close()


async def test_request_id_is_honoured_and_returned_on_success_and_error(
    gateway: GatewayApp, stub: generation_pb2_grpc.GenerationServiceStub
) -> None:
    call = stub.CreateGeneration(request(), metadata=(("x-request-id", "req-123"),))
    await call
    assert dict(await call.trailing_metadata())["x-request-id"] == "req-123"

    bad = stub.CreateGeneration(request(num_outputs=99), metadata=(("x-request-id", "r-9"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await bad
    assert dict(await bad.trailing_metadata())["x-request-id"] == "r-9"

    # No id, or one unfit for logs: the gateway makes one.
    for metadata in ((), (("x-request-id", "x" * 500),), (("x-request-id", "a b;c"),)):
        call = stub.CreateGeneration(request(), metadata=metadata)
        await call
        generated = str(dict(await call.trailing_metadata())["x-request-id"])
        assert len(generated) == 32 and int(generated, 16) >= 0


async def test_one_access_line_per_call_without_the_prompt(
    gateway: GatewayApp,
    stub: generation_pb2_grpc.GenerationServiceStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    await stub.CreateGeneration(
        request(num_outputs=2), metadata=(("x-request-id", "ok-1"), ("x-caller", "billing"))
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreateGeneration(request(width=1001), metadata=(("x-request-id", "bad-1"),))
    await eventually(lambda: len(access_lines(caplog)) == 2)
    ok, bad = access_lines(caplog)
    assert ok["request_id"] == "ok-1"
    assert ok["method"] == "CreateGeneration"
    assert ok["caller"] == "billing"
    assert ok["grpc_code"] == "OK"
    assert ok["num_outputs"] == 2 and ok["outputs_returned"] == 2
    assert ok["credits_spent"] == 2 and ok["credits_saved"] == 0
    assert ok["cache_result"] in ("bypass", "miss", "uncacheable")
    assert ok["account"] == account_fingerprint(ACCOUNT_KEY)
    assert 0 < ok["upstream_seconds"] <= ok["latency_seconds"]
    assert ok["prompt_sha256"] == prompt_digest(PROMPT)
    assert "prompt" not in ok
    assert bad["request_id"] == "bad-1"
    assert bad["grpc_code"] == "INVALID_ARGUMENT"
    assert bad["error_reason"] == "INVALID_REQUEST"
    assert bad["caller"] == "unknown"
    assert all(PROMPT not in r.getMessage() for r in caplog.records)


async def test_prompt_is_logged_only_with_log_prompts(
    make_gateway: GatewayFactory, channel_to: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await make_gateway(log_prompts=True)
    stub = generation_pb2_grpc.GenerationServiceStub(await channel_to(app))
    await stub.CreateGeneration(request())
    await eventually(lambda: len(access_lines(caplog)) == 1)
    assert access_lines(caplog)[0]["prompt"] == PROMPT


async def test_health_and_reflection_are_not_counted(
    gateway: GatewayApp, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    health = health_pb2_grpc.HealthStub(channel)
    await health.Check(health_pb2.HealthCheckRequest())
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    async for _ in reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    ):
        pass
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/no.Such/Method")(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    services = {
        s.labels.get("grpc_service")
        for m in gateway.registry.collect()
        if m.name.startswith("grpc_server")
        for s in m.samples
    }
    assert services == {SERVICE}
    assert sample(gateway, "grpc_server_started_total", **GRPC) == 0
    assert access_lines(caplog) == []


async def test_callers_from_metadata_or_settings_and_bounded(
    make_gateway: GatewayFactory, channel_to: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await make_gateway(caller="web-frontend", max_callers=2)
    stub = generation_pb2_grpc.GenerationServiceStub(await channel_to(app))
    for x_caller in (None, "a", "b", "c", "d", "a"):
        metadata = (("x-caller", x_caller),) if x_caller else ()
        await stub.CreateGeneration(request(num_outputs=1), metadata=metadata)
    spent: dict[str, float] = {}
    for m in app.registry.collect():
        if m.name == "stablecog_credits_spent":
            for s in m.samples:
                if s.name.endswith("_total"):  # summed over models (initialised at 0)
                    spent[s.labels["caller"]] = spent.get(s.labels["caller"], 0) + s.value
    assert spent == {"web-frontend": 1, "a": 2, "b": 1, "other": 2}
    # The access log still names callers counted as `other`.
    lines = access_lines(caplog)
    assert [(line["caller"], line.get("caller_raw")) for line in lines] == [
        ("web-frontend", None),
        ("a", None),
        ("b", None),
        ("other", "c"),
        ("other", "d"),
        ("a", None),
    ]


async def test_cancelled_and_deadline_codes(
    gateway: GatewayApp, stub: generation_pb2_grpc.GenerationServiceStub, emulator: Emulator
) -> None:
    emulator.set_latency(2.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(), timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: handled(gateway, "DEADLINE_EXCEEDED") == 1)

    call = stub.CreateGeneration(request())
    await eventually(lambda: sample(gateway, "stablecog_inflight_requests") == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: handled(gateway, "CANCELLED") == 1)
    assert sample(gateway, "stablecog_inflight_requests") == 0
    assert sample(gateway, "grpc_server_started_total", **GRPC) == 2


async def test_metrics_endpoint_serves_the_text_format(
    gateway: GatewayApp, stub: generation_pb2_grpc.GenerationServiceStub
) -> None:
    await stub.CreateGeneration(request(num_outputs=1))
    assert gateway.metrics_port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.metrics_port}") as http:
        answer = await http.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        assert (await http.get("/other")).status_code == 404
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert families["grpc_server_handled"].type == "counter"
    assert families["grpc_server_handling_seconds"].type == "histogram"
    assert families["stablecog_credits_remaining"].type == "gauge"
    promtool = shutil.which("promtool")
    if promtool:
        lint = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(lint.communicate(answer.content), timeout=60)
        assert lint.returncode == 0, output.decode()
