"""Bytes that are not a request: answered INVALID_ARGUMENT with an ErrorInfo, counted,
and logged once per call (never once per frame at error level); nothing is sent."""

from __future__ import annotations

import logging

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import GatewayApp
from gateway.call_runner import MAX_REQUEST_BYTES
from tests.conftest import GatewayFactory
from tests.fixtures import eventually, upstream_calls
from tests.status import rich_error

SERVICE = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"]
METHOD = f"/{SERVICE.full_name}/CreateGeneration"
GRPC = {"grpc_type": "unary", "grpc_service": SERVICE.full_name, "grpc_method": "CreateGeneration"}


async def send_raw(app: GatewayApp, payload: bytes, method: str = METHOD) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{app.grpc_port}",
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    ) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(payload, timeout=10)
    return caught.value


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff\xff", "UNDECODABLE_REQUEST"),  # not protobuf
        (b"\x0a\x02\xff\xfe", "UNDECODABLE_REQUEST"),  # prompt that is not UTF-8
        (b"\x0a\x05abc", "UNDECODABLE_REQUEST"),  # truncated
        (b"\x0a" + b"\x80\x80\x80\x04" + b"x" * (8 << 20), "REQUEST_TOO_LARGE"),
    ],
    ids=["garbage", "invalid-utf8", "truncated", "8-mib-prompt"],
)
async def test_bytes_that_are_not_a_request_are_answered_with_details(
    make_gateway: GatewayFactory,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO)
    app = await make_gateway()
    error = rich_error(await send_raw(app, payload))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == reason
    assert error.info.domain == "stablecog-gateway"
    assert upstream_calls(emulator) == 0
    await eventually(
        lambda: (
            app.registry.get_sample_value(
                "grpc_server_handled_total", {**GRPC, "grpc_code": "INVALID_ARGUMENT"}
            )
            == 1
        )
    )
    access = [vars(r) for r in caplog.records if r.name == "gateway.access"]
    assert [(a["grpc_code"], a["error_reason"]) for a in access] == [("INVALID_ARGUMENT", reason)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_limit_is_what_the_gateway_says(make_gateway: GatewayFactory) -> None:
    app = await make_gateway()
    just_fits = generation_pb2.GenerationRequest(prompt="x" * (MAX_REQUEST_BYTES - 16))
    assert len(just_fits.SerializeToString()) <= MAX_REQUEST_BYTES
    # Within the limit the request is decoded and judged on its content, not its size.
    error = rich_error(await send_raw(app, just_fits.SerializeToString()[:-1]))
    assert error.info is not None and error.info.reason == "UNDECODABLE_REQUEST"


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
async def test_every_method_of_the_contract_is_served(
    make_gateway: GatewayFactory, method: str
) -> None:
    app = await make_gateway()
    error = await send_raw(app, b"\xff", f"/{SERVICE.full_name}/{method}")
    assert error.code() is not grpc.StatusCode.UNIMPLEMENTED
