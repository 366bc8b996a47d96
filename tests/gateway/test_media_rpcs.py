"""UploadImage and CreateUpscale against the emulator over real gRPC: checks before any
upstream call, the money rules, the cache of upscales, the error rows and the metrics."""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.app import GatewayApp
from gateway.media import MAX_UPLOAD_BYTES, sniff_content_type
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import request

Stub = generation_pb2_grpc.GenerationServiceStub
UPLOAD = "/v1/image/upload"
UPSCALE = "/v1/image/upscale/create"
AURA_SR = "e94a23f3-d9a4-45e9-bb08-9c7e6bce7b72"
CacheResult = generation_pb2.CacheResult


def picture(image_format: str, size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 60, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


def sent(emulator: Emulator, path: str) -> int:
    return sum(1 for r in emulator.requests if r.path == path)


def details(error: grpc.aio.AioRpcError) -> tuple[str, list[str], dict[str, str]]:
    """(ErrorInfo reason, BadRequest fields, ErrorInfo metadata)."""
    status = rpc_status.from_call(error)
    assert status is not None
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    fields: list[str] = []
    for detail in status.details:
        if detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
        detail.Unpack(info)
    return info.reason, fields, dict(info.metadata)


def handled(gateway: GatewayApp, method: str, code: str) -> float | None:
    return gateway.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "stablecog.v1.GenerationService",
            "grpc_method": method,
            "grpc_code": code,
        },
    )


def test_sniffing_uses_the_first_bytes_only() -> None:
    assert sniff_content_type(picture("JPEG")) == "image/jpeg"
    assert sniff_content_type(picture("PNG")) == "image/png"
    assert sniff_content_type(picture("WEBP")) == "image/webp"
    assert sniff_content_type(picture("GIF")) is None
    assert sniff_content_type(b"\xff\xd8") is None


async def test_an_upload_round_trip_is_free_and_usable_as_init_image(
    gateway: GatewayApp, stub: Stub, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    # Over the 4 MiB every other method allows: this method's limit is raised.
    data = picture("PNG") + b"\0" * (5 * 1024 * 1024)
    uploaded = await stub.UploadImage(generation_pb2.UploadImageRequest(file=data))
    assert uploaded.object.startswith("s3://") and uploaded.object.endswith(".png")
    assert uploaded.content_type == "image/png"
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS
    generated = await stub.CreateGeneration(
        request(init_image_url=uploaded.object, num_outputs=1, width=256, height=256)
    )
    assert generated.settings.init_image_url == uploaded.object
    assert handled(gateway, "UploadImage", "OK") == 1
    (line,) = [r for r in caplog.records if getattr(r, "method", None) == "UploadImage"]
    assert (line.grpc_code, line.credits_spent, line.credits_saved) == ("OK", 0, 0)
    assert ACCOUNT_KEY not in json.dumps(line.__dict__, default=str)


@pytest.mark.parametrize(
    "data",
    [picture("GIF"), b"", picture("PNG") + b"\0" * MAX_UPLOAD_BYTES],
    ids=["gif", "empty", "over-10MB"],
)
async def test_a_bad_file_is_refused_before_any_upstream_call(
    gateway: GatewayApp, stub: Stub, emulator: Emulator, data: bytes
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadImage(generation_pb2.UploadImageRequest(file=data))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[:2] == ("INVALID_REQUEST", ["file"])
    assert sent(emulator, UPLOAD) == 0
    failures = gateway.registry.get_sample_value(
        "stablecog_validation_failures_total", {"field": "file"}
    )
    assert failures == 1


async def test_an_upload_lost_after_sending_is_unavailable(stub: Stub, emulator: Emulator) -> None:
    emulator.faults.inject("drop_connection")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadImage(generation_pb2.UploadImageRequest(file=picture("JPEG")))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    reason, _, metadata = details(caught.value)
    assert (reason, metadata["cause"]) == ("UPLOAD_FAILED", "UPSTREAM_CONNECTION_LOST")
    assert "retrying is safe" in (caught.value.details() or "")
    assert sent(emulator, UPLOAD) == 1


async def test_an_upload_from_an_account_without_credits(make_gateway, emulator: Emulator) -> None:
    broke = "sc-" + "9" * 64
    emulator.add_account(broke, 0)
    gateway = await make_gateway(api_key=broke)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stub(channel).UploadImage(generation_pb2.UploadImageRequest(file=picture("PNG")))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(caught.value)[0] == "INSUFFICIENT_CREDITS"


async def _output_id(stub: Stub) -> str:
    generated = await stub.CreateGeneration(request(num_outputs=1, width=256, height=256, seed=7))
    return generated.outputs[0].id


async def test_an_upscale_costs_one_credit_and_a_repeat_is_served_from_the_cache(
    gateway: GatewayApp, stub: Stub, emulator: Emulator
) -> None:
    output_id = await _output_id(stub)
    before = emulator.balance(ACCOUNT_KEY)
    call = stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=output_id))
    first = await call
    assert dict(await call.trailing_metadata())["x-cache"] == "miss"
    assert first.cache_result == CacheResult.CACHE_RESULT_MISS
    assert (first.settings.model_id, first.settings.input) == (AURA_SR, output_id)
    assert first.outputs[0].id == output_id and first.outputs[0].upscaled_image_url
    assert emulator.balance(ACCOUNT_KEY) == first.remaining_credits == before - 1
    again = await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=output_id.upper()))
    assert again.cache_result == CacheResult.CACHE_RESULT_HIT
    assert again.outputs[0].upscaled_image_url == first.outputs[0].upscaled_image_url
    assert emulator.balance(ACCOUNT_KEY) == before - 1
    assert sent(emulator, UPSCALE) == 1
    spent = gateway.registry.get_sample_value(
        "stablecog_credits_spent_total", {"model": AURA_SR, "caller": "unknown"}
    )
    saved = gateway.registry.get_sample_value(
        "stablecog_credits_saved_total", {"caller": "unknown"}
    )
    assert (spent, saved) == (1, 1)
    assert handled(gateway, "CreateUpscale", "OK") == 2


async def test_an_upscale_of_a_url_is_never_cached(stub: Stub, emulator: Emulator) -> None:
    generated = await stub.CreateGeneration(request(num_outputs=1, width=256, height=256))
    url = generated.outputs[0].url
    before = emulator.balance(ACCOUNT_KEY)
    for _ in range(2):
        answer = await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=url))
        assert answer.cache_result == CacheResult.CACHE_RESULT_UNCACHEABLE
    assert emulator.balance(ACCOUNT_KEY) == before - 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input": "ftp://x/y.png"}, "input"),
        ({"input": ""}, "input"),
        ({"input": "00000000-0000-4000-8000-000000000000", "model_id": "nope"}, "model_id"),
    ],
    ids=["scheme", "missing", "model"],
)
async def test_an_invalid_upscale_is_refused_before_any_spend(
    stub: Stub, emulator: Emulator, fields: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(**fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[:2] == ("INVALID_REQUEST", [field])
    assert sent(emulator, UPSCALE) == 0


async def test_the_upstreams_refusal_names_the_field(stub: Stub, emulator: Emulator) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUpscale(
            generation_pb2.CreateUpscaleRequest(input="00000000-0000-4000-8000-000000000000")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[:2] == ("OUTPUT_NOT_FOUND", ["input"])
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS


async def test_a_failed_upscale_is_refunded_and_unavailable(stub: Stub, emulator: Emulator) -> None:
    output_id = await _output_id(stub)
    before = emulator.balance(ACCOUNT_KEY)
    emulator.faults.inject("worker_failure")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=output_id))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(caught.value)[0] == "RUNPOD_FAILED"
    assert emulator.balance(ACCOUNT_KEY) == before


async def test_an_upscale_lost_after_charging_may_have_been_charged(
    stub: Stub, emulator: Emulator
) -> None:
    output_id = await _output_id(stub)
    before = emulator.balance(ACCOUNT_KEY)
    emulator.faults.inject("drop_connection", charge=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=output_id))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert details(caught.value)[0] == "UPSTREAM_CONNECTION_LOST"
    assert "the upscale may have been charged" in (caught.value.details() or "")
    assert emulator.balance(ACCOUNT_KEY) == before - 1


async def test_only_the_upload_limit_is_raised(stub: Stub, emulator: Emulator) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await stub.UploadImage(generation_pb2.UploadImageRequest(file=b"\0" * (13 << 20)))
    with pytest.raises(grpc.aio.AioRpcError) as prompt:
        await stub.CreateGeneration(request(negative_prompt="x" * (5 << 20)))
    for caught in (too_big, prompt):
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value)[0] == "REQUEST_TOO_LARGE"
    assert sent(emulator, UPLOAD) == 0


async def test_the_access_log_shows_an_upscale_spent_then_saved(
    stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    output_id = await _output_id(stub)
    caplog.set_level(logging.INFO, logger="gateway.access")
    for _ in range(2):
        await stub.CreateUpscale(generation_pb2.CreateUpscaleRequest(input=output_id))
    lines = [r for r in caplog.records if getattr(r, "method", None) == "CreateUpscale"]
    assert [(r.cache_result, r.num_outputs, r.credits_spent, r.credits_saved) for r in lines] == [
        ("miss", 1, 1, 0),
        ("hit", 1, 0, 1),
    ]
    assert all(r.model_id == AURA_SR and r.account for r in lines)
