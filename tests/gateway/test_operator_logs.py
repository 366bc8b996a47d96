"""What an operator sees in the logs: the start-up line, key warnings, a rejected key."""

from __future__ import annotations

import logging

import grpc
import pytest

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.account import account_fingerprint
from tests.conftest import ACCOUNT_KEY, GatewayFactory


def records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(message)]


async def test_start_up_line_names_the_setup(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = await make_gateway(cache="memory")
    (line,) = records(caplog, "gateway serving")
    assert line.__dict__["grpc_port"] == app.grpc_port
    assert line.__dict__["cache"] == "memory"
    assert line.__dict__["key_source"] == "env"
    assert line.__dict__["key_fingerprint"] == account_fingerprint(ACCOUNT_KEY)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert ACCOUNT_KEY not in caplog.text


@pytest.mark.parametrize(
    ("api_key", "warning"),
    [
        (None, "no STABLECOG_API_KEY or key file"),
        ("sk-live-something", "the configured API key does not look like a Stablecog key"),
    ],
)
async def test_key_warnings(
    make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
    api_key: str | None,
    warning: str,
) -> None:
    await make_gateway(api_key=api_key)
    assert [r.levelno for r in records(caplog, warning)] == [logging.WARNING]


async def test_a_rejected_configured_key_is_logged_once_as_an_error(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bad_key = "sc-" + "2" * 64
    app = await make_gateway(api_key=bad_key)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreateGeneration(generation_pb2.GenerationRequest(prompt="x"))
    (line,) = records(caplog, "Stablecog rejects the configured API key")
    assert line.levelno == logging.ERROR
    assert line.__dict__["key_fingerprint"] == account_fingerprint(bad_key)
    assert bad_key not in caplog.text
