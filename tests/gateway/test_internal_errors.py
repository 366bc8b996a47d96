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
from tests.fixtures import call, eventually, request
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
    assert len(failures) == 1
    line = json.loads(JsonFormatter().format(failures[0]))
    assert "Traceback (most recent call last)" in line["traceback"]
    assert "RuntimeError" in line["traceback"]
    assert "BrokenTransport" in line["traceback"] or "handle_async_request" in line["traceback"]
    assert ACCOUNT_KEY not in json.dumps(line)
    assert ACCOUNT_KEY[3:] not in json.dumps(line)
    # And the access line for the call says what the caller got (it is written just
    # after the caller has its answer).
    await eventually(lambda: any(r.name == "gateway.access" for r in caplog.records))
    access = [r for r in caplog.records if r.name == "gateway.access"]
    assert [vars(r)["grpc_code"] for r in access] == ["INTERNAL"]
    assert vars(access[0])["error_reason"] == "GATEWAY_INTERNAL_ERROR"


class LeakyTransport(httpx.AsyncBaseTransport):
    """A bug whose message carries the caller's own key, whatever its shape."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"failed with {request.headers['authorization'].split()[-1]}")


async def test_a_forwarded_key_of_any_shape_is_cut_out_of_the_traceback(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    app = await make_gateway(Seams(upstream_transport=LeakyTransport()), api_key=None)
    odd_key = "k3y-0f-an0ther-shape-42"  # not `sc-...`: the pattern redaction misses it
    with pytest.raises(grpc.aio.AioRpcError):
        await call(app, request(seed=None), metadata=[("authorization", f"Bearer {odd_key}")])
    failures = [r for r in caplog.records if r.getMessage() == "unexpected failure"]
    assert len(failures) == 1
    text = JsonFormatter().format(failures[0])
    assert "failed with" in text
    assert odd_key not in text
