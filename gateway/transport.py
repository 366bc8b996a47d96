"""How requests reach the upstream: aiohttp's connection pool, behind a small interface.

`UpstreamTransport` is the one thing the Stablecog client needs: POST bytes, get the
status, headers and body back, or an httpx transport error saying what failed (httpx's
error classes are the vocabulary of the money table in gateway.transport_errors).

- `AiohttpUpstream` (production) calls aiohttp directly: no httpx Request or Response is
  built per call. Of the four clients measured (BENCHMARKS.md, `python -m bench.clients`)
  it costs the least CPU per call (136 us against 343 us for httpx.AsyncClient over
  aiohttp, 217 us for a prebuilt httpx request), and holds thousands of slow calls open
  at the lowest CPU.
- `HttpxUpstream` adapts any httpx transport (the seam tests use: httpx.MockTransport or
  a transport of their own) with a prebuilt request and no client.
- `AiohttpTransport` is an httpx transport over aiohttp, for the reachability probe
  (httpx's own pool, httpcore, collapses with thousands of slow requests open: 35 s
  against 4.3 s for 1,000 concurrent 2 s calls).

The maintained `httpx-aiohttp` package was measured too and is not used: it is no faster
than our transport, and its error map turns a dropped connection after the request was
sent (aiohttp.ServerDisconnectedError, a ClientConnectionError) into httpx.ConnectTimeout,
which would tell a caller "nothing was sent" for a generation that may have been charged.
aiohttp's exceptions are mapped to httpx's in one table, `EXCEPTION_MAP`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
import orjson

# Most specific first; the first match wins. tests prove every aiohttp error is covered.
EXCEPTION_MAP: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.NetworkError),
    (aiohttp.ClientError, httpx.TransportError),
)
# Bodies above this (aiohttp's own threshold, 1 MiB) are handed over as a stream.
_STREAMED_BODY_BYTES = 1024 * 1024
# Headers describing the body as aiohttp received it, before it decompressed it.
_HOP_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


def httpx_error_for(error: BaseException) -> type[httpx.TransportError] | None:
    for aiohttp_type, httpx_type in EXCEPTION_MAP:
        if isinstance(error, aiohttp_type):
            return httpx_type
    return None


def _converted(error: TimeoutError | aiohttp.ClientError, request: httpx.Request | None) -> Any:
    mapped = httpx_error_for(error)
    if mapped is None:  # a bare asyncio timeout from inside aiohttp
        mapped = httpx.ReadTimeout
    return mapped(str(error) or type(error).__name__, request=request)


def json_body(payload: object) -> bytes:
    """A JSON request body: compact, UTF-8, as httpx encodes `json=` (but for how some
    floats are spelled: 1e-05 as 0.00001, 1e-07 as 1e-7). orjson, not json: 0.5 us
    against 2.4 for a generation's body. orjson writes NaN and infinities as null where
    json refuses them, so they are refused here too (ValueError, as json's): validation
    keeps them out, and a null would stand for "the upstream's default", not for what the
    caller asked."""
    encoded = orjson.dumps(payload)
    if b"null" in encoded and not _finite(payload):  # only then can a float have become null
        raise ValueError("Out of range float values are not JSON compliant")
    # A copy of exactly its size: orjson's own bytes keep the ~4 KB buffer it wrote into
    # (10,000 bodies held for slow generations pinned 41 MB, against 0.9 MB copied).
    return memoryview(encoded).tobytes()


def _finite(value: object) -> bool:
    """False if `value` holds a NaN or an infinity anywhere."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(item) for item in value)
    return True


@dataclass(frozen=True)
class RawAnswer:
    """An upstream answer: status, headers (case-insensitive), the decoded body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamTransport(Protocol):
    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawAnswer:
        """POST `body`; the answer, or an httpx.TransportError subclass."""
        ...

    async def get(self, url: str, headers: Mapping[str, str]) -> RawAnswer:
        """GET `url`; the answer, or an httpx.TransportError subclass."""
        ...

    async def aclose(self) -> None: ...


def _session(max_connections: int, keepalive_seconds: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=keepalive_seconds
    )
    return aiohttp.ClientSession(
        connector=connector,
        # The total is enforced by the caller (a generation may take minutes).
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    )


class AiohttpUpstream:
    """aiohttp directly: one pooled session (made on first use, in the loop)."""

    def __init__(
        self, *, max_connections: int, connect_timeout: float, keepalive_seconds: float = 60.0
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawAnswer:
        # aiohttp warns that raw bytes this large may block the loop (an upload).
        data = io.BytesIO(body) if len(body) > _STREAMED_BODY_BYTES else body
        return await self._send("POST", url, headers, data)

    async def get(self, url: str, headers: Mapping[str, str]) -> RawAnswer:
        return await self._send("GET", url, headers, None)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], data: bytes | io.BytesIO | None
    ) -> RawAnswer:
        session = self._session
        if session is None or session.closed:
            session = self._session = _session(self._max_connections, self._keepalive_seconds)
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                return RawAnswer(response.status, response.headers, await response.read())
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _converted(error, None) from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxUpstream:
    """Any httpx transport as an UpstreamTransport (the tests' seam): a prebuilt request,
    no client (no cookie jar, no URL merge)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, *, connect_timeout: float) -> None:
        self._transport = transport
        self._extensions = {
            "timeout": {"connect": connect_timeout, "read": None, "write": None, "pool": None}
        }

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> RawAnswer:
        return await self._send("POST", url, headers, body)

    async def get(self, url: str, headers: Mapping[str, str]) -> RawAnswer:
        return await self._send("GET", url, headers, None)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> RawAnswer:
        request = httpx.Request(
            method, url, headers=headers, content=body, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return RawAnswer(response.status_code, response.headers, body)

    async def aclose(self) -> None:
        await self._transport.aclose()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests with one pooled aiohttp session (made on first use, in the loop)."""

    def __init__(self, *, max_connections: int, keepalive_seconds: float = 60.0) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Timeouts come from each request's httpx extensions.
        if self._session is None or self._session.closed:
            self._session = _session(self._max_connections, self._keepalive_seconds)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        try:
            async with self._get_session().request(
                request.method,
                str(request.url),
                headers=headers,
                # aiohttp warns that raw bytes this large may block the loop (an upload).
                data=io.BytesIO(body) if len(body) > _STREAMED_BODY_BYTES else body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            ) as response:
                content = await response.read()
                response_headers = [
                    (k, v) for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS
                ]
                return httpx.Response(
                    response.status,
                    headers=response_headers,
                    content=content,
                    request=request,
                )
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _converted(error, request) from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
