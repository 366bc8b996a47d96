"""The gateway end to end: a real grpc.aio server, a generated stub, the emulator over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from emulator.server import Emulator
from gateway.app import GatewayApp
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, OTHER_KEY, GatewayFactory, sha256
from tests.fixtures import CREATE, Stub, call, request, upstream_requests
from tests.gateway.cases import BOUNDARIES, MODEL
from tests.services import refusing_port
from tests.status import rich_error


def generation_bodies(emulator: Emulator) -> list[dict[str, Any] | None]:
    return [r.json for r in upstream_requests(emulator)]


async def test_valid_call_returns_outputs_and_settings(stub: Stub, emulator: Emulator) -> None:
    response, cache = await call(stub, request(num_outputs=3, seed=7, width=512, height=768))
    assert len(response.outputs) == 3
    for output in response.outputs:
        assert output.id and output.url.startswith(emulator.base_url)
        assert output.image_url == output.url
    assert response.settings.seed == 7
    assert (response.settings.width, response.settings.height) == (512, 768)
    assert response.settings.num_outputs == 3
    assert response.settings.model_id and response.settings.scheduler_id
    assert response.remaining_credits == INITIAL_CREDITS - 3
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 3
    assert cache in {"bypass", "miss", "uncacheable"}


async def test_images_are_real_and_deterministic(stub: Stub) -> None:
    import httpx

    first = await stub.CreateGeneration(request(seed=42, num_outputs=1, width=256, height=256))
    second = await stub.CreateGeneration(request(seed=42, num_outputs=1, width=256, height=256))
    other = await stub.CreateGeneration(request(seed=43, num_outputs=1, width=256, height=256))
    async with httpx.AsyncClient() as http:
        images = [(await http.get(r.outputs[0].url)) for r in (first, second, other)]
    assert all(i.status_code == 200 and i.content[:2] == b"\xff\xd8" for i in images)
    assert images[0].content == images[1].content != images[2].content


async def test_rest_body_holds_exactly_the_set_fields(stub: Stub, emulator: Emulator) -> None:
    first = await stub.CreateGeneration(request())
    seeded = await stub.CreateGeneration(
        request(seed=0, negative_prompt="", guidance_scale=7.5, model_id=MODEL, num_outputs=1)
    )
    # img2img from an image the emulator serves itself (it fetches loopback URLs only).
    init_image = first.outputs[0].url
    await stub.CreateGeneration(request(prompt_strength=0.0, init_image_url=init_image, width=512))
    bodies = generation_bodies(emulator)
    assert bodies == [
        {"prompt": "a lighthouse at dawn"},
        {
            "prompt": "a lighthouse at dawn",
            "seed": 0,
            "negative_prompt": "",
            "guidance_scale": 7.5,
            "model_id": MODEL,
            "num_outputs": 1,
        },
        {
            "prompt": "a lighthouse at dawn",
            "prompt_strength": 0.0,
            "init_image_url": init_image,
            "width": 512,
        },
    ]
    # Seed 0 is a real seed: sent as 0, and the upstream used it rather than drawing one.
    assert seeded.settings.HasField("seed") and seeded.settings.seed == 0


@pytest.mark.parametrize(
    ("fields", "expected"),
    [c for c in BOUNDARIES if c[1]],
    ids=[str(c[0]) for c in BOUNDARIES if c[1]],
)
async def test_each_constraint_rejects_before_the_upstream(
    stub: Stub, emulator: Emulator, fields: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(**fields))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(f for f, _ in error.violations) == sorted(expected)
    assert all(description for _, description in error.violations)
    assert error.info is not None and error.info.reason == "INVALID_REQUEST"
    assert upstream_requests(emulator) == []  # (its only request: the start-up health check)
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS


async def test_valid_boundaries_reach_the_upstream(stub: Stub, emulator: Emulator) -> None:
    valid = [
        fields for fields, expected in BOUNDARIES if not expected and "init_image_url" not in fields
    ]
    rejected = []
    for fields in valid:
        try:
            await stub.CreateGeneration(request(**fields))
        except grpc.aio.AioRpcError as error:
            rejected.append((fields, rich_error(error)))
    # Refused by the gateway with the catalog's default size, before any upstream call.
    for fields, error in rejected:
        assert error.info is not None and error.info.reason == "INVALID_REQUEST", fields
        assert [f for f, _ in error.violations] == ["inference_steps"], fields
    # The static rule checks pixel-steps only when both sizes are set; the catalog-aware
    # check fills in the model's default size (1024 here), and 1024 x 1024 x 50 is over
    # the limit: the upstream would refuse it too.
    assert [fields for fields, _ in rejected] == [
        {"inference_steps": 50},
        {"width": 1024, "inference_steps": 50},
    ]
    assert len(generation_bodies(emulator)) == len(valid) - len(rejected)


# --- upstream errors, one row of the table each, through the real emulator ---

FAULT_ROWS = [
    # fault, params, code, reason, retry_info expected
    ("worker_failure", {"error": "TIMEOUT"}, grpc.StatusCode.UNAVAILABLE, "TIMEOUT", True),
    (
        "worker_failure",
        {"error": "runpod_failed"},
        grpc.StatusCode.UNAVAILABLE,
        "RUNPOD_FAILED",
        True,
    ),
    ("rate_limit", {}, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", True),
    ("queue_full", {}, grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_LIMIT_REACHED", True),
    (
        "insufficient_credits",
        {},
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
        False,
    ),
    ("internal_error", {}, grpc.StatusCode.INTERNAL, "UPSTREAM_UNKNOWN_ERROR", False),
    ("http_status", {"status": 502}, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_502", False),
    ("http_status", {"status": 503}, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_503", False),
    ("http_status", {"status": 504}, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_504", False),
    ("http_status", {"status": 500}, grpc.StatusCode.INTERNAL, "UPSTREAM_HTTP_500", False),
    ("malformed_success", {}, grpc.StatusCode.INTERNAL, "UPSTREAM_BAD_RESPONSE", False),
    (
        "malformed_success",
        {"variant": "not_json"},
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_BAD_RESPONSE",
        False,
    ),
    ("banned", {}, grpc.StatusCode.PERMISSION_DENIED, "USER_BANNED", False),
    ("nsfw_prompt", {}, grpc.StatusCode.INVALID_ARGUMENT, "NSFW_PROMPT", False),
    (
        "image_url_error",
        {},
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_URL_WIDTH_HEIGHT_ERROR",
        False,
    ),
    ("drop_connection", {}, grpc.StatusCode.INTERNAL, "UPSTREAM_CONNECTION_LOST", False),
]


@pytest.mark.parametrize(
    ("fault", "params", "code", "reason", "retry"),
    FAULT_ROWS,
    ids=[f"{r[0]}-{r[3]}" for r in FAULT_ROWS],
)
async def test_upstream_error_row(
    stub: Stub,
    emulator: Emulator,
    fault: str,
    params: dict[str, Any],
    code: grpc.StatusCode,
    reason: str,
    retry: bool,
) -> None:
    emulator.faults.inject(fault, count=1, **params)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(num_outputs=2))
    error = rich_error(caught.value)
    assert error.code is code
    assert error.info is not None and error.info.reason == reason
    assert (error.retry_delay is not None) is retry
    assert ACCOUNT_KEY not in error.message
    assert "{" not in error.message  # no raw JSON body
    # The fault was used up: the next call succeeds.
    response = await stub.CreateGeneration(request(num_outputs=1))
    assert len(response.outputs) == 1


async def test_worker_failure_is_refunded(stub: Stub, emulator: Emulator) -> None:
    emulator.faults.inject("worker_failure", count=1, error="no_outputs")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.CreateGeneration(request(num_outputs=4))
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS


async def test_an_unknown_model_is_refused_with_the_catalog(stub: Stub, emulator: Emulator) -> None:
    # A well-formed UUID that is no model: the catalog says so (without it, the upstream's
    # own INVALID_MODEL_ID: tests/gateway/test_catalog_validation.py).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(
            request(model_id="00000000-0000-4000-8000-000000000000", width=512, height=512)
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "INVALID_REQUEST"
    assert [f for f, _ in error.violations] == ["model_id"]
    assert upstream_requests(emulator) == []


async def test_an_unreadable_init_image_names_the_field(stub: Stub, emulator: Emulator) -> None:
    missing = f"{emulator.base_url}/images/00000000-0000-4000-8000-000000000000.jpeg"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(init_image_url=missing))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "IMAGE_URL_WIDTH_HEIGHT_ERROR"
    assert [f for f, _ in error.violations] == ["init_image_url"]
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS


async def test_rate_limit_retry_delay_comes_from_retry_after(
    stub: Stub, emulator: Emulator
) -> None:
    emulator.faults.inject("rate_limit", count=1, retry_after=7)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request())
    assert rich_error(caught.value).retry_delay == 7.0


# --- auth ---


async def test_configured_key_wins_over_the_callers(stub: Stub, emulator: Emulator) -> None:
    await stub.CreateGeneration(request(), metadata=[("authorization", f"Bearer {OTHER_KEY}")])
    (recorded,) = upstream_requests(emulator)
    assert recorded.token_sha256 == sha256(ACCOUNT_KEY)


async def test_callers_key_is_forwarded_without_a_configured_key(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(api_key=None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = Stub(channel)
        response = await stub.CreateGeneration(
            request(num_outputs=1), metadata=[("authorization", f"Bearer {OTHER_KEY}")]
        )
        assert response.remaining_credits == INITIAL_CREDITS - 1
        assert emulator.balance(OTHER_KEY) == INITIAL_CREDITS - 1

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateGeneration(request())
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.UNAUTHENTICATED
        assert error.info is not None and error.info.reason == "MISSING_API_KEY"
        assert len(upstream_requests(emulator)) == 1  # the keyless call never left the gateway

        bad_key = "sc-" + "0" * 64
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateGeneration(
                request(), metadata=[("authorization", f"Bearer {bad_key}")]
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.UNAUTHENTICATED
        assert error.info is not None and error.info.reason == "UNAUTHORIZED"
        assert bad_key not in error.message


async def test_rejected_configured_key_is_an_operator_problem(
    make_gateway: GatewayFactory,
) -> None:
    app = await make_gateway(api_key="sc-" + "1" * 64)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stub(channel).CreateGeneration(request())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.info is not None and error.info.reason == "CONFIGURED_API_KEY_REJECTED"
    assert "1111" not in error.message


async def test_unreachable_upstream_is_unavailable(make_gateway: GatewayFactory) -> None:
    with refusing_port() as port:
        app = await make_gateway(upstream_url=f"http://127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await Stub(channel).CreateGeneration(request())
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.info is not None and error.info.reason == "UPSTREAM_UNREACHABLE"


# --- deadlines ---


async def test_callers_deadline_propagates_to_the_upstream_call(
    stub: Stub, emulator: Emulator
) -> None:
    emulator.set_latency(3.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(), timeout=0.5)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The gateway gave up on the upstream too: the emulator sees the client leave
    # long before its 3 s answer would have been ready.
    await emulator.wait_for_requests(CREATE, 1)
    recorded = upstream_requests(emulator)[0]
    for _ in range(50):  # bounded: the emulator notices a client gone within 50 ms
        if recorded.client_disconnected:
            break
        await asyncio.sleep(0.05)
    assert recorded.client_disconnected
    assert loop.time() - started < 2.5


async def test_gateway_upstream_timeout_is_internal_and_may_have_been_charged(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    emulator.set_latency(2.0)
    app = await make_gateway(upstream_timeout=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stub(channel).CreateGeneration(request(), timeout=10)
    error = rich_error(caught.value)
    # The request was sent: INTERNAL (no client retries it by itself), never DEADLINE_EXCEEDED.
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.info is not None and error.info.reason == "UPSTREAM_TIMEOUT"
    assert "may have been charged" in caught.value.details()


async def test_longer_deadline_than_upstream_latency_succeeds(
    stub: Stub, emulator: Emulator
) -> None:
    emulator.set_latency(0.3)
    response = await stub.CreateGeneration(request(num_outputs=1), timeout=5)
    assert len(response.outputs) == 1


# --- health and reflection ---


async def test_health_is_serving_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "stablecog.v1.GenerationService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert {"stablecog.v1.GenerationService", "grpc.health.v1.Health"} <= names


async def test_settings_stay_out_of_logs_and_errors(gateway: GatewayApp) -> None:
    assert ACCOUNT_KEY not in repr(gateway.settings)
    assert ACCOUNT_KEY not in json.dumps(repr(gateway.keys.resolve({})))
