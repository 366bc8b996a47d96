"""The Stablecog REST client: one pooled transport, a total timeout per call, error mapping.

One request per call: retrying what the upstream provably did not act on is
gateway.upstream_generator's job (gateway.retries); a request the upstream may have acted
on is never sent twice. Every failure leaves as a
GatewayError: HTTP error answers through gateway.upstream_errors, httpx errors through
the table in gateway.transport_errors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from gateway import tracing
from gateway.account import ApiKey
from gateway.call import CallBudget
from gateway.errors import CallTimedOut, GatewayError, UpstreamTimedOut
from gateway.events import NULL_TELEMETRY, Telemetry, UpstreamFailed, UpstreamRequestEnded
from gateway.tracing import AttributeValue, TraceParent, Tracing
from gateway.transport import AiohttpUpstream, HttpxUpstream, UpstreamTransport, json_body
from gateway.transport_errors import upstream_error_for
from gateway.upstream_defaults import CREATE_ENDPOINT, CREATE_PATH
from gateway.upstream_errors import error_from_response
from gateway.version import USER_AGENT


@dataclass(frozen=True)
class UpstreamAnswer:
    """The body of a 200 answer (parsed by gateway.translate) and how long it took."""

    body: bytes
    seconds: float


class StablecogClient:
    """Sends generations to the upstream and maps every failure to a GatewayError.

    Requests go through gateway.transport: aiohttp directly, or the httpx transport a test
    passes (`transport`). The URL and the fixed headers are built once; the connect
    timeout is the transport's; the total is enforced per call (CallBudget), since a
    generation may take minutes.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        max_connections: int = 10000,
        transport: httpx.AsyncBaseTransport | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
        tracing: Tracing | None = None,
    ) -> None:
        self._telemetry = telemetry
        self._tracing = tracing or Tracing.off()
        url = httpx.URL(base_url)
        self._span_attributes: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            # Without any user:password of the base URL.
            "url.full": str(url.join(CREATE_PATH).copy_with(userinfo=b"")),
        }
        self._url = base_url.rstrip("/") + CREATE_PATH  # as httpx merges a base URL
        # httpx's defaults, which the gateway sent before it called aiohttp directly.
        self._headers = {
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            "user-agent": USER_AGENT,
            "content-type": "application/json",
        }
        self._transport: UpstreamTransport = (
            HttpxUpstream(transport, connect_timeout=connect_timeout)
            if transport is not None
            else AiohttpUpstream(max_connections=max_connections, connect_timeout=connect_timeout)
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def create_generation(
        self,
        body: dict[str, Any],
        key: ApiKey,
        budget: CallBudget,
        trace: TraceParent | None = None,
    ) -> UpstreamAnswer:
        """POST one generation; return the 200 answer or raise the mapped GatewayError."""
        started = time.perf_counter()
        status_class = "error"
        status_code: int | None = None
        span = self._tracing.child(trace, "POST", client=True, attributes=self._span_attributes)
        headers = {**self._headers, "authorization": key.authorization}
        tracing.inject(span, headers)
        try:
            try:
                async with asyncio.timeout(budget.seconds):
                    response = await self._transport.post(self._url, headers, json_body(body))
            except TimeoutError:
                status_class = "timeout"
                raise _timed_out(budget) from None
            except httpx.RequestError as error:
                raise upstream_error_for(error) from None
            seconds = time.perf_counter() - started
            status_code = response.status
            status_class = f"{response.status // 100}xx"
            if response.status != 200:
                raise error_from_response(
                    response.status, response.body, response.headers, configured_key=key.configured
                )
            return UpstreamAnswer(body=response.body, seconds=seconds)
        except GatewayError as error:
            self._telemetry.emit(UpstreamFailed(error.reason))
            tracing.fail(span, error.reason)
            raise
        finally:
            tracing.end(span, {"http.response.status_code": status_code})
            self._telemetry.emit(
                UpstreamRequestEnded(CREATE_ENDPOINT, status_class, time.perf_counter() - started)
            )


def _timed_out(budget: CallBudget) -> CallTimedOut:
    if budget.caller_deadline:
        return CallTimedOut("the call's deadline ran out before Stablecog answered")
    return UpstreamTimedOut(
        f"Stablecog did not answer within the gateway's upstream timeout ({budget.seconds:g} s)"
    )
