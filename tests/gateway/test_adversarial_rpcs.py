"""An adversarial pass over UploadImage, CreateUpscale, ListModels and GetCredits: what a
careless or hostile caller sends, and what an unlucky upstream does, costs nothing it
should not and leaks no key."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.catalog import RETRY_AFTER_FAILURE_SECONDS, ModelCatalog
from gateway.errors import UpstreamReadFailed
from gateway.media import MAX_UPLOAD_BYTES, sniff_content_type
from gateway.upstream import StablecogClient
from tests.conftest import ACCOUNT_KEY, FakeClock, GatewayFactory
from tests.fixtures import request
from tests.status import rich_error

Stub = generation_pb2_grpc.GenerationServiceStub
REFRESH_TASK = "model catalog refresh"  # gateway.catalog's background refresh
PAID = ("/v1/image/generation/create", "/v1/image/upscale/create", "/v1/image/upload")


def catalog_upstream(status: int) -> tuple[StablecogClient, list[str]]:
    """A client whose upstream answers both catalog routes with `status` (each request
    yields once first, so concurrent callers really overlap)."""
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        await asyncio.sleep(0)
        if status != 200:
            return httpx.Response(status, json={"error": "An unknown error has occured"})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"models": [{"id": "m1", "name": "M"}]})
        return httpx.Response(200, json={"model_id": "m1", "width": 512, "height": 512})

    client = StablecogClient("http://upstream.invalid", transport=httpx.MockTransport(handle))
    return client, seen


async def test_a_cold_catalog_is_fetched_once_for_a_storm_of_callers() -> None:
    client, seen = catalog_upstream(200)
    catalog = ModelCatalog(client, clock=FakeClock())
    answers = await asyncio.gather(*(catalog.get() for _ in range(50)))
    assert {a.models[0].id for a in answers} == {"m1"}
    assert len(seen) == 2  # one refresh: the models and the defaults
    await client.aclose()


async def test_a_cold_catalog_that_cannot_be_fetched_is_not_asked_again_per_caller() -> None:
    clock = FakeClock()
    client, seen = catalog_upstream(503)
    catalog = ModelCatalog(client, clock=clock)
    outcomes = await asyncio.gather(*(catalog.get() for _ in range(50)), return_exceptions=True)
    assert all(isinstance(o, UpstreamReadFailed) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 50  # each caller raises its own error
    assert len(seen) == 2  # one refresh tried, not one per caller queued on the lock
    # Within the pause, neither a call nor the request checks' snapshot asks again.
    with pytest.raises(UpstreamReadFailed):
        await catalog.get()
    assert catalog.snapshot() is None
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == REFRESH_TASK))
    assert len(seen) == 2
    clock.advance(RETRY_AFTER_FAILURE_SECONDS)
    with pytest.raises(UpstreamReadFailed):
        await catalog.get()
    assert len(seen) == 4
    await catalog.aclose()
    await client.aclose()


async def test_a_12_mib_generation_is_refused_at_4_mib(stub: Stub, emulator: Emulator) -> None:
    for rpc, message in (
        (stub.CreateGeneration, request(negative_prompt="x" * (12 << 20))),
        (stub.CreateUpscale, generation_pb2.CreateUpscaleRequest(input="x" * (12 << 20))),
        (stub.ListModels, generation_pb2.ListModelsRequest()),
    ):
        if isinstance(message, generation_pb2.ListModelsRequest):
            # Unknown fields padding a tiny request: still bytes to hold.
            padded = (
                message.SerializeToString() + b"\xfa\x3f" + _varint(5 << 20) + b"\0" * (5 << 20)
            )
            message = generation_pb2.ListModelsRequest.FromString(padded)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rpc(message)  # type: ignore[operator]
        found = rich_error(caught.value)
        assert found.code is grpc.StatusCode.INVALID_ARGUMENT, rpc
        assert found.info is not None and found.info.reason == "REQUEST_TOO_LARGE"
    assert not [r for r in emulator.requests if r.path in PAID]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def test_a_rejected_forwarded_key_is_in_no_answer_and_no_log(
    make_gateway: GatewayFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await make_gateway(api_key=None)
    rejected = "sc-" + "7" * 64  # no such account upstream
    idempotency_key = "idem-" + "5" * 40
    metadata = (("authorization", f"Bearer {rejected}"), ("idempotency-key", idempotency_key))
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    codes = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        for rpc, message in (
            (stub.UploadImage, generation_pb2.UploadImageRequest(file=png)),
            (stub.CreateUpscale, generation_pb2.CreateUpscaleRequest(input=str(uuid.uuid4()))),
            (stub.GetCredits, generation_pb2.GetCreditsRequest()),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rpc(message, metadata=metadata)  # type: ignore[operator]
            codes.append(caught.value.code())
            answer = repr(caught.value.details()) + repr(caught.value.trailing_metadata())
            assert rejected not in answer and rejected[3:] not in answer
            assert idempotency_key not in answer
        await stub.ListModels(generation_pb2.ListModelsRequest(), metadata=metadata)
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert rejected[3:] not in logged and idempotency_key not in logged
    assert [r for r in emulator.requests if r.path == "/v1/image/upscale/create"]


@pytest.mark.parametrize(
    ("size", "code"),
    [(MAX_UPLOAD_BYTES, "OK"), (MAX_UPLOAD_BYTES + 1, "INVALID_ARGUMENT")],
    ids=["10MB", "10MB+1"],
)
async def test_the_upload_size_limit_is_exact(
    stub: Stub, emulator: Emulator, size: int, code: str
) -> None:
    png = b"\x89PNG\r\n\x1a\n"
    try:
        await stub.UploadImage(generation_pb2.UploadImageRequest(file=png.ljust(size, b"\0")))
        answered = "OK"
    except grpc.aio.AioRpcError as error:
        answered = error.code().name
    assert answered == code
    assert len([r for r in emulator.requests if r.path == "/v1/image/upload"]) == (code == "OK")


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff", b"\xff\xd8\xff" + bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\nPK\x03\x04"],
    ids=["bare-jpeg-signature", "jpeg-header-then-garbage", "png-zip-polyglot"],
)
async def test_a_file_is_judged_by_its_first_bytes_as_the_upstream_does(
    stub: Stub, emulator: Emulator, data: bytes
) -> None:
    """The upstream sniffs the first bytes (Go's http.DetectContentType) and so does the
    gateway: such a file is uploaded, free, with the type its signature names; whether it
    decodes is the worker's to find (a generation's worker failure is refunded)."""
    before = emulator.balance(ACCOUNT_KEY)
    uploaded = await stub.UploadImage(generation_pb2.UploadImageRequest(file=data))
    assert uploaded.content_type == sniff_content_type(data)
    assert uploaded.object.endswith("." + uploaded.content_type.split("/")[1])
    assert emulator.balance(ACCOUNT_KEY) == before
