"""Can the gateway reach what it depends on: the upstream and, with `--cache redis`, Redis.

Checked once at start (the result is on the "gateway serving" line, and an unreachable
dependency is a warning naming it, its address and the error) and every
`RECHECK_SECONDS` after, so the `stablecog_dependency_reachable` gauge stays true; a
change is logged (a warning when one is lost, info when it is back). A failed check never
stops the gateway: the upstream may come up later, and the cache fails open.

The upstream check is `GET /v1/health`: no key, no credits, not rate limited. The Redis
check is a PING through the cache's own connection pool (the function is passed in, so
this module never imports the Redis client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from gateway.clock import Clock
from gateway.redis_url import SENTINEL_SCHEME
from gateway.transport import AiohttpTransport
from gateway.version import USER_AGENT

_log = logging.getLogger(__name__)

HEALTH_PATH = "/v1/health"
RECHECK_SECONDS = 30.0
# A check waits at most this long (or the upstream's connect timeout, if shorter), so an
# upstream that drops packets delays the start by seconds, not minutes.
MAX_CHECK_SECONDS = 5.0

UPSTREAM = "upstream"
REDIS = "redis"


class Probe(Protocol):
    """One dependency's check."""

    dependency: str  # the metric label and the log's name for it
    address: str  # where it is, as logs may show it (never a password)
    consequence: str  # what callers see while it is unreachable

    async def check(self) -> None:
        """Return when it is reachable; raise (anything) when it is not."""
        ...

    async def aclose(self) -> None: ...


class Unhealthy(Exception):
    """It answered, but not as a healthy dependency does."""


class UpstreamProbe:
    """`GET <upstream>/v1/health`, expecting a 2xx."""

    dependency = UPSTREAM
    consequence = "calls fail with UNAVAILABLE until it answers"

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.address = base_url
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            headers={"user-agent": USER_AGENT},
            # The same kind of transport as generations take (a test's transport is
            # borrowed, not closed with this client).
            transport=_Borrowed(transport) if transport else AiohttpTransport(max_connections=1),
            follow_redirects=False,
        )

    async def check(self) -> None:
        async with asyncio.timeout(self._timeout):
            response = await self._client.get(HEALTH_PATH)
        if not response.is_success:
            raise Unhealthy(f"GET {HEALTH_PATH} answered HTTP {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


class RedisProbe:
    """A PING (`ping`: the cache backend's, raising its BackendFailure)."""

    dependency = REDIS
    consequence = "calls are served without the cache (each seeded call is paid)"

    def __init__(self, url: str, ping: Callable[[], Awaitable[None]], *, timeout: float) -> None:
        self.address = redis_address(url)
        self._ping = ping
        self._timeout = timeout

    async def check(self) -> None:
        async with asyncio.timeout(self._timeout):
            await self._ping()

    async def aclose(self) -> None:
        return None  # the pool is the cache's, closed with it


def redis_address(url: str) -> str:
    """A Redis URL without its user name and password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    if parts.scheme == SENTINEL_SCHEME:  # several host:port, no single port
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def describe(error: BaseException) -> str:
    """An error as a log shows it, with the cause a wrapper hides."""
    if isinstance(error, TimeoutError):
        return "no answer in time"
    cause = error.__cause__
    if cause is not None and str(error) == type(cause).__name__:
        error, cause = cause, None  # a wrapper that only names the real error
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({cause})"
    return text


class Reachability:
    """Runs the probes at start (`check`) and every `interval` seconds after (`watch`);
    `report(dependency, reachable)` is told every result (the metrics)."""

    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        report: Callable[[str, bool], None],
        clock: Clock,
        interval: float = RECHECK_SECONDS,
    ) -> None:
        self._probes = tuple(probes)
        self._report = report
        self._clock = clock
        self._interval = interval
        self._state: dict[str, bool] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> dict[str, bool]:
        """{dependency: reachable at its last check}."""
        return dict(self._state)

    async def check(self) -> dict[str, bool]:
        """Check every dependency once (at the same time); their state after."""
        await asyncio.gather(*(self._check(probe) for probe in self._probes))
        return self.state

    def watch(self) -> None:
        """Check again every `interval` seconds until `aclose`."""
        if self._task is None and self._probes:
            self._task = asyncio.create_task(self._recheck(), name="reachability")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for probe in self._probes:
            await probe.aclose()

    async def _recheck(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            await self.check()

    async def _check(self, probe: Probe) -> None:
        try:
            await probe.check()
        except Exception as error:  # whatever it is, the dependency did not answer
            problem: str | None = describe(error)
        else:
            problem = None
        reachable = problem is None
        before = self._state.get(probe.dependency)
        self._state[probe.dependency] = reachable
        self._report(probe.dependency, reachable)
        fields = {"dependency": probe.dependency, "address": probe.address}
        if not reachable and before is None:
            _log.warning(
                f"{probe.dependency} {probe.address} is unreachable at start ({problem}); "
                f"serving anyway: {probe.consequence}",
                extra={**fields, "error": problem},
            )
        elif not reachable and before:
            _log.warning(
                f"{probe.dependency} {probe.address} became unreachable ({problem}): "
                f"{probe.consequence}",
                extra={**fields, "error": problem},
            )
        elif reachable and before is False:
            _log.info(f"{probe.dependency} {probe.address} is reachable again", extra=fields)


class _Borrowed(httpx.AsyncBaseTransport):
    """Another client's transport, used but never closed by this one."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None
