"""A bug inside the gateway: the caller gets INTERNAL GATEWAY_INTERNAL_ERROR and nothing
of the internals; the gateway's log gets one line with a redacted traceback."""

from __future__ import annotations

import json
import logging

import grpc
import httpx
import pytest

from gateway.app import Seams
from gateway.logs import JsonFormatter
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import call, request
from tests.status import rich_error


class BrokenTransport(httpx.AsyncBaseTransport):
    """The outside world behaving in a way no table maps: a plain bug surfaces."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"unexpected state near {ACCOUNT_KEY}")


async def test_a_bug_is_answered_as_internal_and_logged_with_a_redacted_traceback(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    app = await make_gateway(Seams(upstream_transport=BrokenTransport()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(seed=None))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.info is not None and error.info.reason == "GATEWAY_INTERNAL_ERROR"
    assert error.info.domain == "stablecog-gateway"
    assert "RuntimeError" not in error.message and ACCOUNT_KEY not in error.message
    failures = [r for r in caplog.records if r.getMessage() == "unexpected failure"]
    assert len(failures) == 1 and failures[0].exc_info is not None
    line = json.loads(JsonFormatter().format(failures[0]))
    assert line["exception"] == "RuntimeError"
    assert "Traceback (most recent call last)" in line["traceback"]
    assert "BrokenTransport" in line["traceback"] or "handle_async_request" in line["traceback"]
    assert ACCOUNT_KEY not in json.dumps(line)
    assert ACCOUNT_KEY[3:] not in json.dumps(line)
    # And the access line for the call says what the caller got.
    access = [r for r in caplog.records if r.name == "gateway.access"]
    assert [vars(r)["grpc_code"] for r in access] == ["INTERNAL"]
    assert vars(access[0])["error_reason"] == "GATEWAY_INTERNAL_ERROR"
