"""The Stablecog REST client: one pooled httpx client, a total timeout per call, error mapping.

The gateway never retries a generation: the upstream charges for each one, and a
request it may have acted on must not be sent twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.auth import ApiKey
from gateway.calls import NullTelemetry, Telemetry
from gateway.errors import (
    CallTimedOut,
    GatewayError,
    UpstreamInternal,
    UpstreamUnavailable,
)
from gateway.transport import AiohttpTransport
from gateway.upstream_errors import error_from_response

CREATE_PATH = "/v1/image/generation/create"
USER_AGENT = "stablecog-gateway/0.1"


@dataclass(frozen=True)
class UpstreamAnswer:
    """The body of a 200 answer (parsed by gateway.translate) and how long it took."""

    body: bytes
    seconds: float


@dataclass(frozen=True)
class CallBudget:
    """How long one upstream call may take, and whether the caller's deadline set it."""

    seconds: float
    caller_deadline: bool

    @classmethod
    def of(cls, configured: float, caller_remaining: float | None) -> CallBudget:
        if caller_remaining is not None and caller_remaining < configured:
            return cls(max(caller_remaining, 0.0), caller_deadline=True)
        return cls(configured, caller_deadline=False)


class StablecogClient:
    """Sends generations to the upstream and maps every failure to a GatewayError.

    httpx is the API; the connection pool underneath is aiohttp's (gateway.transport),
    which holds thousands of slow calls open without slowing down.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 10.0,
        max_connections: int = 1000,
        transport: httpx.AsyncBaseTransport | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or NullTelemetry()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            # The total is enforced per call (CallBudget); a read may last minutes.
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"user-agent": USER_AGENT},
            transport=transport or AiohttpTransport(max_connections=max_connections),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def create_generation(
        self, body: dict[str, Any], key: ApiKey, budget: CallBudget
    ) -> UpstreamAnswer:
        """POST one generation; return the 200 answer or raise the mapped GatewayError."""
        started = time.perf_counter()
        status_class = "error"
        try:
            try:
                async with asyncio.timeout(budget.seconds):
                    response = await self._client.post(
                        CREATE_PATH, json=body, headers={"authorization": f"Bearer {key.value}"}
                    )
            except TimeoutError:
                status_class = "timeout"
                raise _timed_out(budget) from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                raise UpstreamUnavailable(
                    "cannot connect to Stablecog; nothing was sent, retrying is safe",
                    reason="UPSTREAM_UNREACHABLE",
                    retry_after=1.0,
                ) from None
            except httpx.HTTPError:
                # Sent, but the answer was lost: the upstream may have charged for it.
                raise UpstreamInternal(
                    "the connection to Stablecog was lost before it answered; the generation "
                    "may have been charged, so check before retrying",
                    reason="UPSTREAM_CONNECTION_LOST",
                ) from None
            seconds = time.perf_counter() - started
            status_class = f"{response.status_code // 100}xx"
            if response.status_code != 200:
                raise error_from_response(
                    response.status_code,
                    response.content,
                    response.headers,
                    configured_key=key.configured,
                )
            return UpstreamAnswer(body=response.content, seconds=seconds)
        except GatewayError as error:
            self._telemetry.upstream_error(error.reason)
            raise
        finally:
            self._telemetry.upstream_request(
                "generation_create", status_class, time.perf_counter() - started
            )


def _timed_out(budget: CallBudget) -> CallTimedOut:
    if budget.caller_deadline:
        return CallTimedOut(
            "the call's deadline ran out before Stablecog answered",
            reason="DEADLINE_EXCEEDED",
        )
    return CallTimedOut(
        f"Stablecog did not answer within the gateway's upstream timeout ({budget.seconds:g} s)",
        reason="UPSTREAM_TIMEOUT",
    )
