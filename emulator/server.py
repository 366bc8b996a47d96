"""The emulator's aiohttp application and `Emulator`, the handle tests and the CLI use.

Stablecog endpoints (docs/upstream-api.md; what is left out or deliberately different:
docs/upstream-api.md#emulator-differences):

    POST /v1/image/generation/create     also at the deprecated /v1/image/generate
    GET  /v1/image/generation/models     also /v1/image/models/generate; no auth
    GET  /v1/image/generation/defaults   also /v1/image/defaults/generate; no auth
    GET  /v1/credits                     API token
    POST /v1/image/upload                API token; multipart `file` -> an s3:// key
    POST /v1/image/upscale/create        also /v1/image/upscale; API token; 1 credit

All but /v1/health and /images/ are rate limited per client IP on one shared counter (create
at `rate_limit_per_second`, the others at twice that). An http(s) init or mask image is
fetched (HEAD, then GET) only from a loopback host; see `emulator.imagefetch`.
    GET  /v1/health
    GET  /images/<id>.jpeg               the outputs' pictures (the real ones live on a CDN)

Unknown paths get chi's plain-text `404 page not found`, wrong methods an empty 405. The
`/_emulator/` control API is described in `emulator.control`.

In-process use::

    emu = Emulator(EmulatorConfig(latency_seconds=0.0, rate_limit_per_second=0))
    await emu.start(host="127.0.0.1", port=0)
    emu.add_account("sc-" + "0" * 64, credits=10)
    ...  # call emu.base_url
    await emu.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from emulator import api, control, media
from emulator.accounts import token_sha256
from emulator.config import EmulatorConfig
from emulator.faults import FaultQueue
from emulator.records import RecordedRequest
from emulator.state import RECORD_KEY, STATE_KEY, EmulatorState, bearer_token

logger = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Longer bodies (uploads) are recorded as their size only.
MAX_RECORDED_BODY = 64 * 1024


def _error_of(response: web.StreamResponse) -> str | None:
    """The error a response reports: the JSON `error` field or a plain-text body."""
    if response.status < 400 or not isinstance(response, web.Response):
        return None
    body = response.body
    if not isinstance(body, bytes) or not body:
        return None
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("application/json"):
        try:
            document = json.loads(body)
        except ValueError:
            return None
        error = document.get("error") if isinstance(document, dict) else None
        return error if isinstance(error, str) else None
    return body.decode("utf-8", errors="replace").strip()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


@web.middleware
async def _record_requests(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Record every request outside /_emulator/, and answer routing errors as chi does."""
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    state = request.app[STATE_KEY]
    body = await request.read()
    token = bearer_token(request.headers.get("Authorization"))
    record = RecordedRequest(
        method=request.method,
        path=request.path,
        json=_json_object(body),
        # An upload's megabytes are not kept: only their size.
        body=body.decode("utf-8", errors="replace")
        if len(body) <= MAX_RECORDED_BODY
        else f"<{len(body)} bytes>",
        token_sha256=token_sha256(token) if token is not None else None,
        client_ip=api.client_ip(request),
        received_at=time.time(),
        traceparent=request.headers.get("traceparent"),
    )
    state.record(record)
    request[RECORD_KEY] = record
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = api.not_found()
    except web.HTTPMethodNotAllowed as exc:
        response = web.Response(
            status=405, headers={"Allow": ", ".join(sorted(exc.allowed_methods))}
        )
    finally:
        record.completed_at = time.time()
    if not record.connection_dropped:
        record.status = response.status
        record.error = _error_of(response)
    return response


async def _strip_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.pop("Server", None)  # Go's net/http sends none


class _AccessLogger(AbstractAccessLogger):
    """One line per request; tokens and bodies are never logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        record = request.get(RECORD_KEY) if isinstance(request, web.Request) else None
        dropped = record is not None and record.connection_dropped
        self.logger.info(
            "%s %s %s %s %.3fs",
            request.remote,
            request.method,
            request.path,
            "dropped" if dropped else response.status,
            time,
        )


def build_app(state: EmulatorState) -> web.Application:
    """The aiohttp application serving `state`."""
    app = web.Application(middlewares=[_record_requests], client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    app.on_response_prepare.append(_strip_server_header)
    router = app.router
    for path in ("/v1/image/generation/create", "/v1/image/generate"):
        router.add_post(path, api.create_generation)
    for path in ("/v1/image/generation/models", "/v1/image/models/generate"):
        router.add_get(path, api.get_models, allow_head=False)
    for path in ("/v1/image/generation/defaults", "/v1/image/defaults/generate"):
        router.add_get(path, api.get_defaults, allow_head=False)
    router.add_post("/v1/image/upload", media.upload_image)
    for path in ("/v1/image/upscale/create", "/v1/image/upscale"):
        router.add_post(path, media.create_upscale)
    router.add_get("/v1/credits", api.get_credits, allow_head=False)
    router.add_get("/v1/health", api.health, allow_head=False)
    router.add_get("/images/{name}", api.get_image)
    control.add_routes(app)
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Emulator:
    """A running (or startable) emulator: a real HTTP server plus handles on its state."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self._state = EmulatorState(config if config is not None else EmulatorConfig())
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0 picks a free one); `base_url` tells where."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        # Generations are drained by stop() itself; other handlers get a short grace.
        runner = web.AppRunner(
            build_app(self._state), shutdown_timeout=0.25, access_log_class=_AccessLogger
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_port = runner.addresses[0][1]
        self._runner = runner
        self._state.closing = False
        self._base_url = f"http://{_url_host(host)}:{bound_port}"
        self._state.public_url = self._state.config.public_url or self._base_url
        logger.debug("emulator started at %s", self._base_url)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening. Generations still running get `grace` seconds, then are cancelled
        (their clients see the connection close)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._state.closing = True
        jobs = set(self._state.jobs)
        if jobs and grace > 0:
            await asyncio.wait(jobs, timeout=grace)
        await self._cancel_jobs()
        await runner.cleanup()
        await self._cancel_jobs()
        await self._state.disconnects.aclose()

    async def _cancel_jobs(self) -> None:
        jobs = set(self._state.jobs)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://host:port` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the emulator has not been started")
        return self._base_url

    @property
    def public_url(self) -> str:
        """Base of the image URLs handed out."""
        return self._state.public_url

    @property
    def config(self) -> EmulatorConfig:
        """The settings in force (runtime changes included)."""
        return self._state.config

    @property
    def faults(self) -> FaultQueue:
        """The fault queue: `emu.faults.inject("worker_failure", count=1, error="TIMEOUT")`."""
        return self._state.faults

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far (control API excluded), oldest first."""
        return self._state.records()

    async def wait_for_requests(
        self,
        path: str,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109 - the bound is part of what tests ask for
        *,
        where: Callable[[RecordedRequest], bool] | None = None,
    ) -> None:
        """Return once `count` requests to `path` (and, if given, for which `where(record)`
        holds) have been received; TimeoutError after `timeout` seconds. They are counted
        in `requests`, so `reset()` starts the count again."""
        woken = asyncio.Event()
        self._state.record_waiters.add(woken)
        try:
            async with asyncio.timeout(timeout):
                while self._received(path, where) < count:
                    woken.clear()
                    await woken.wait()
        except TimeoutError:
            seen = self._received(path, where)
            raise TimeoutError(
                f"{seen} of {count} requests to {path} received within {timeout} s"
            ) from None
        finally:
            self._state.record_waiters.discard(woken)

    def _received(self, path: str, where: Callable[[RecordedRequest], bool] | None) -> int:
        return sum(
            1 for r in self._state.records() if r.path == path and (where is None or where(r))
        )

    @property
    def generation_count(self) -> int:
        """Generations that were charged and handed to the worker (refunded ones included)."""
        return self._state.generation_count

    @property
    def open_connections(self) -> int:
        """HTTP connections open to the emulator now (idle keep-alive ones included)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def running_generations(self) -> int:
        """Generations whose worker is still running (they finish even if the client left)."""
        return len(self._state.jobs)

    def add_account(self, token: str, credits: int | None = None) -> str:
        """Accept `token` with `credits` (default: `initial_credits`); returns its SHA-256.
        An existing account is reset to the new amount."""
        return self._state.add_account(token, credits).token_sha256

    def balance(self, token: str) -> int:
        """Credits left on the token's account (KeyError if it has none)."""
        return self._state.ledger.balance(token_sha256(token))

    def in_flight(self, token: str) -> int:
        """Generations of the token's account being worked on now."""
        return self._state.throttler.in_flight(token_sha256(token))

    def waiting(self, token: str) -> int:
        """Requests of the token's account waiting in the queue for a turn."""
        return self._state.throttler.waiting(token_sha256(token))

    def set_latency(self, seconds: float) -> None:
        """Change how long a successful generation takes."""
        self._state.configure({"latency_seconds": seconds})

    def configure(self, **changes: object) -> EmulatorConfig:
        """Change runtime-adjustable settings (see `EmulatorConfig.runtime_dict`)."""
        return self._state.configure(changes)

    def reset(self) -> None:
        """Forget records, faults and rate counts; restore balances and startup settings."""
        self._state.reset()
