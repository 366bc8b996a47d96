"""The httpx boundary: every httpx request error mapped to what it means for money.

An error raised before the request was written means nothing was sent: retrying is
safe (`UpstreamUnreachable`, UNAVAILABLE). An error raised once the request may have
been written means the upstream may have acted and charged (`UpstreamConnectionLost`,
INTERNAL). One row per httpx error class; tests/gateway/test_transport_errors.py
proves every subclass of `httpx.RequestError` has its own row.
"""

from __future__ import annotations

from enum import Enum

import httpx

from gateway.errors import UpstreamConnectionLost, UpstreamError, UpstreamUnreachable


class Sent(Enum):
    """Whether the upstream can have received the request when the error was raised."""

    NOTHING = "nothing was sent"
    MAYBE = "may have been sent"


TRANSPORT_ERRORS: dict[type[httpx.RequestError], Sent] = {
    # Before a connection existed, or refused before anything was written.
    httpx.ConnectError: Sent.NOTHING,
    httpx.ConnectTimeout: Sent.NOTHING,
    httpx.PoolTimeout: Sent.NOTHING,
    httpx.UnsupportedProtocol: Sent.NOTHING,
    httpx.ProxyError: Sent.NOTHING,
    httpx.LocalProtocolError: Sent.NOTHING,  # the request could not be formed
    # Writing started: the whole body may have reached the upstream.
    httpx.WriteError: Sent.MAYBE,
    httpx.WriteTimeout: Sent.MAYBE,
    # Sent; the answer was lost or unreadable.
    httpx.ReadError: Sent.MAYBE,
    httpx.ReadTimeout: Sent.MAYBE,
    httpx.RemoteProtocolError: Sent.MAYBE,
    httpx.CloseError: Sent.MAYBE,
    httpx.DecodingError: Sent.MAYBE,
    httpx.TooManyRedirects: Sent.MAYBE,  # redirects are off; an answer came, so it was sent
    # Bases, for a subclass a future httpx adds: the cautious answer.
    httpx.NetworkError: Sent.MAYBE,
    httpx.TimeoutException: Sent.MAYBE,
    httpx.ProtocolError: Sent.MAYBE,
    httpx.TransportError: Sent.MAYBE,
    httpx.RequestError: Sent.MAYBE,
}


def sent_for(error: httpx.RequestError) -> Sent:
    """The row of the nearest class of `error` in the table."""
    for cls in type(error).__mro__:
        found = TRANSPORT_ERRORS.get(cls)
        if found is not None:
            return found
    return Sent.MAYBE


def upstream_error_for(error: httpx.RequestError) -> UpstreamError:
    """The gateway error a caller gets for an httpx request error."""
    if sent_for(error) is Sent.NOTHING:
        return UpstreamUnreachable(
            "cannot connect to Stablecog; nothing was sent, retrying is safe",
            retry_after=1.0,
        )
    return UpstreamConnectionLost(
        "the connection to Stablecog was lost before it answered; the generation "
        "may have been charged, so check before retrying"
    )
