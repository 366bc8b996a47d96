"""The httpx boundary table is complete, and only errors raised once the request may
have been written count as "may have been charged"."""

from __future__ import annotations

import httpx
import pytest

from gateway.errors import UpstreamConnectionLost, UpstreamUnreachable, grpc_code
from gateway.transport_errors import TRANSPORT_ERRORS, Sent, sent_for, upstream_error_for
from tests.fixtures import all_subclasses


def test_every_httpx_request_error_has_its_own_row() -> None:
    missing = {
        cls.__name__
        for cls in all_subclasses(httpx.RequestError) | {httpx.RequestError}
        if cls.__module__.startswith("httpx") and cls not in TRANSPORT_ERRORS
    }
    assert not missing, f"add rows to gateway.transport_errors.TRANSPORT_ERRORS: {missing}"


@pytest.mark.parametrize(
    "cls",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.UnsupportedProtocol,
        httpx.ProxyError,
        httpx.LocalProtocolError,
    ],
)
def test_errors_before_the_request_was_written_say_nothing_was_sent(
    cls: type[httpx.RequestError],
) -> None:
    error = upstream_error_for(cls("x"))
    assert type(error) is UpstreamUnreachable
    assert grpc_code(error).name == "UNAVAILABLE"
    assert error.retry_after is not None
    assert "nothing was sent" in error.message


@pytest.mark.parametrize(
    "cls",
    sorted(
        (c for c, sent in TRANSPORT_ERRORS.items() if sent is Sent.MAYBE),
        key=lambda c: c.__name__,
    ),
)
def test_errors_after_writing_began_say_it_may_have_been_charged(
    cls: type[httpx.RequestError],
) -> None:
    error = upstream_error_for(cls("x"))
    assert type(error) is UpstreamConnectionLost
    assert grpc_code(error).name == "INTERNAL"  # clients do not retry it on their own
    assert error.retry_after is None
    assert "may have been charged" in error.message


def test_an_unknown_subclass_gets_the_cautious_answer() -> None:
    class Future(httpx.TransportError):
        pass

    assert sent_for(Future("x")) is Sent.MAYBE
