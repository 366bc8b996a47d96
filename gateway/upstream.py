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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from gateway import tracing
from gateway.account import ApiKey
from gateway.call import CallBudget
from gateway.errors import (
    MAY_HAVE_BEEN_CHARGED,
    CallerKeyRejected,
    CallTimedOut,
    ConfiguredKeyRejected,
    GatewayError,
    UpstreamBusy,
    UpstreamPermissionDenied,
    UpstreamReadFailed,
    UpstreamTimedOut,
)
from gateway.events import NULL_TELEMETRY, Telemetry, UpstreamFailed, UpstreamRequestEnded
from gateway.tracing import AttributeValue, TraceParent, Tracing
from gateway.transport import AiohttpUpstream, HttpxUpstream, UpstreamTransport, json_body
from gateway.transport_errors import upstream_error_for
from gateway.upstream_defaults import (
    CREATE_ENDPOINT,
    CREATE_PATH,
    UPLOAD_ENDPOINT,
    UPLOAD_PATH,
    UPSCALE_ENDPOINT,
    UPSCALE_PATH,
)
from gateway.upstream_errors import (
    GENERATION_FIELDS,
    UPLOAD_FIELDS,
    UPSCALE_FIELDS,
    error_from_response,
)
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
        self._span_attributes: dict[str, dict[str, AttributeValue]] = {
            path: {
                "http.request.method": "POST",
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
                # Without any user:password of the base URL.
                "url.full": str(url.join(path).copy_with(userinfo=b"")),
            }
            for path in (CREATE_PATH, UPSCALE_PATH, UPLOAD_PATH)
        }
        self._base = base_url.rstrip("/")  # paths are joined as httpx merges a base URL
        # httpx's defaults, which the gateway sent before it called aiohttp directly.
        self._headers = {
            "accept": "*/*",
            "accept-encoding": "gzip, deflate",
            "user-agent": USER_AGENT,
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
        return await self._post(CREATE_PATH, CREATE_ENDPOINT, key, budget, trace, json=body)

    async def create_upscale(
        self,
        body: dict[str, Any],
        key: ApiKey,
        budget: CallBudget,
        trace: TraceParent | None = None,
    ) -> UpstreamAnswer:
        """POST one upscale (charged like a generation); the 200 answer or the mapped error."""
        return await self._post(
            UPSCALE_PATH, UPSCALE_ENDPOINT, key, budget, trace, UPSCALE_FIELDS, json=body
        )

    async def upload_image(
        self,
        data: bytes,
        filename: str,
        content_type: str,
        key: ApiKey,
        budget: CallBudget,
        trace: TraceParent | None = None,
    ) -> UpstreamAnswer:
        """POST one multipart `file` upload; the 200 answer or the mapped error (which
        gateway.media_servicer re-reads: an upload moves no credits)."""
        files = {"file": (filename, data, content_type)}
        return await self._post(
            UPLOAD_PATH, UPLOAD_ENDPOINT, key, budget, trace, UPLOAD_FIELDS, files=files
        )

    async def _post(
        self,
        path: str,
        endpoint: str,
        key: ApiKey,
        budget: CallBudget,
        trace: TraceParent | None,
        fields: Sequence[tuple[str, str]] = GENERATION_FIELDS,
        *,
        json: object | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> UpstreamAnswer:
        """POST once with `key` a JSON body (`json`) or a multipart form (`files`, encoded
        by httpx); return the 200 answer or raise the mapped GatewayError."""
        started = time.perf_counter()
        status_class = "error"
        status_code: int | None = None
        if files is not None:
            form = httpx.Request("POST", self._base + path, files=files)
            body = form.read()
            content_type = form.headers["content-type"]
        else:
            body, content_type = json_body(json), "application/json"
        span = self._tracing.child(
            trace, "POST", client=True, attributes=self._span_attributes[path]
        )
        headers = {
            **self._headers,
            "content-type": content_type,
            "authorization": key.authorization,
        }
        tracing.inject(span, headers)
        try:
            try:
                async with asyncio.timeout(budget.seconds):
                    response = await self._transport.post(self._base + path, headers, body)
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
                    response.status,
                    response.body,
                    response.headers,
                    configured_key=key.configured,
                    fields=fields,
                )
            return UpstreamAnswer(body=response.body, seconds=seconds)
        except GatewayError as error:
            self._telemetry.emit(UpstreamFailed(error.reason))
            tracing.fail(span, error.reason)
            raise
        finally:
            tracing.end(span, {"http.response.status_code": status_code})
            self._telemetry.emit(
                UpstreamRequestEnded(endpoint, status_class, time.perf_counter() - started)
            )

    async def read(
        self, path: str, endpoint: str, seconds: float, key: ApiKey | None = None
    ) -> bytes:
        """GET one of the free reads (no credit moves); return the 200 body. Every failure
        is UpstreamReadFailed (retrying is safe), except a rejected key or a rate limit,
        which keep their own errors."""
        started = time.perf_counter()
        status_class = "error"
        headers = dict(self._headers)
        if key is not None:
            headers["authorization"] = key.authorization
        try:
            try:
                async with asyncio.timeout(seconds):
                    response = await self._transport.get(self._base + path, headers)
            except TimeoutError:
                status_class = "timeout"
                raise UpstreamReadFailed(
                    f"Stablecog did not answer {path} within {seconds:g} s; retry later"
                ) from None
            except httpx.RequestError as error:
                raise UpstreamReadFailed(
                    f"Stablecog could not be reached for {path} "
                    f"({upstream_error_for(error).reason}); retry later"
                ) from None
            status_class = f"{response.status // 100}xx"
            if response.status != 200:
                mapped = error_from_response(
                    response.status,
                    response.body,
                    response.headers,
                    configured_key=key is not None and key.configured,
                )
                if isinstance(mapped, _READ_ERRORS_KEPT):
                    raise mapped
                raise UpstreamReadFailed(
                    f"Stablecog answered {path} with HTTP {response.status}; retry later",
                    metadata={"upstream_status": str(response.status)},
                )
            return response.body
        except GatewayError as error:
            self._telemetry.emit(UpstreamFailed(error.reason))
            raise
        finally:
            self._telemetry.emit(
                UpstreamRequestEnded(endpoint, status_class, time.perf_counter() - started)
            )


# What a failed free read keeps of the generation's error table: the caller (or the
# operator) must act on these; anything else only means "the read failed, retry".
_READ_ERRORS_KEPT = (
    CallerKeyRejected,
    ConfiguredKeyRejected,
    UpstreamBusy,
    UpstreamPermissionDenied,
)


def _timed_out(budget: CallBudget) -> CallTimedOut | UpstreamTimedOut:
    # The request may have been written: the upstream may be generating (and charging).
    if budget.caller_deadline:
        return CallTimedOut(
            f"the call's deadline ran out before Stablecog answered; {MAY_HAVE_BEEN_CHARGED}"
        )
    return UpstreamTimedOut(
        f"Stablecog did not answer within the gateway's upstream timeout ({budget.seconds:g} s); "
        + MAY_HAVE_BEEN_CHARGED
    )
