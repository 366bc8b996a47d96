"""Handlers of the emulated Stablecog endpoints, in the real server's order of checks.

POST /v1/image/generation/create (and the deprecated /v1/image/generate) runs: auth, injected
fault, rate limit, JSON decoding, ban, defaults and validation, image-URL checks (an http(s)
image is fetched there, loopback hosts only: see `emulator.imagefetch`), the account queue,
credit deduction, the prompt check, then the worker (latency, failure or timeout), then the
faults that spoil the answer on its way (a drop, a proxy's status, a reset mid-body, a
trickling body).

The rate-limited routes (create, /v1/credits, models, defaults and their aliases) share one
counter per client IP (`api:<ip>`), each with its own limit: create allows
`rate_limit_per_second`, the others twice that (sc-go `RateLimit(5, "api")` against
`RateLimit(10, "api")`, each doubled by the middleware). /v1/health and /images/ are not limited.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from emulator import catalog, gojson, imagefetch, validation
from emulator.accounts import Account, InsufficientCredits
from emulator.faults import Fault, FaultMode
from emulator.images import RenderParams, render_jpeg
from emulator.ratelimit import RateDecision
from emulator.state import RECORD_KEY, STATE_KEY, EmulatorState
from emulator.throttle import QueueFull

logger = logging.getLogger(__name__)

UNKNOWN_ERROR = "An unknown error has occured"  # sic, as sc-go spells it
CREDIT_TYPE_ID = uuid.UUID("b4d1a5e6-3c1f-4f5e-9a7d-6e2b8c0f1a23")
CREDITS_EXPIRE_AT = "2100-01-01T00:00:00Z"
IMAGE_URL_ERROR = "image_url_width_height_error"
# Route limits relative to the create route's, which is `rate_limit_per_second`.
CREATE_RATE_SCALE = 1
OTHER_RATE_SCALE = 2


def go_json(status: int, payload: object, headers: dict[str, str] | None = None) -> web.Response:
    """A response as chi's `render.JSON` writes it."""
    return web.Response(
        status=status,
        body=gojson.dumps(payload),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def go_text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    """A response as Go's `http.Error` writes it."""
    return web.Response(
        status=status,
        body=(text + "\n").encode(),
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        },
    )


def not_found() -> web.Response:
    """chi's default 404."""
    return go_text(404, "404 page not found")


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket without answering, as a Go handler panic does."""
    request[RECORD_KEY].connection_dropped = True
    request.protocol.force_close()
    return web.Response(status=500)  # never written: the transport is gone


def client_ip(request: web.Request) -> str:
    """sc-go `utils.GetIPAddress`: CF-Connecting-IP, X-Real-Ip, X-Forwarded-For, peer."""
    for header in ("CF-Connecting-IP", "X-Real-Ip"):
        value = request.headers.get(header, "").strip()
        if value:
            return value
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return forwarded or request.remote or ""


def too_many_requests(decision: RateDecision, retry_after: int | None) -> web.Response:
    headers = decision.headers()
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return go_text(429, "Too Many Requests", headers)


def _rate_limit(request: web.Request, state: EmulatorState, scale: int) -> RateDecision | None:
    """The limiter's decision for this client on a route allowing `scale` times the configured
    rate, on the shared `api:<ip>` counter; None when rate limiting is off."""
    if state.config.rate_limit_per_second <= 0:
        return None
    limit = state.config.rate_limit_per_second * scale
    return state.limiter.check("api:" + client_ip(request), limit)


def limited(
    request: web.Request, state: EmulatorState, scale: int
) -> tuple[web.Response | None, dict[str, str]]:
    """(429 response or None, the X-RateLimit-* headers for the answer)."""
    decision = _rate_limit(request, state, scale)
    if decision and not decision.allowed:
        return too_many_requests(decision, 1), {}
    return None, decision.headers() if decision else {}


def _image_id(name: str) -> uuid.UUID | None:
    """The output id in an image file name `<uuid>.jpeg`, else None."""
    stem, dot, extension = name.rpartition(".")
    if not dot or extension != "jpeg":
        return None
    try:
        return uuid.UUID(stem)
    except ValueError:
        return None


def _own_image_known(state: EmulatorState, url: str) -> bool | None:
    """For one of the emulator's own `<public_url>/images/<id>.jpeg` URLs, whether the image
    exists; None for any other URL."""
    prefix = f"{state.public_url}/images/"
    if not state.public_url or not url.startswith(prefix):
        return None
    name = urlsplit(url).path.rpartition("/")[2]
    image_id = _image_id(name)
    return image_id is not None and state.store.params(image_id) is not None


async def http_image_ok(state: EmulatorState, url: str) -> bool:
    """sc-go `GetImageWidthHeightFromUrl` passes, as far as the emulator may find out.

    Hosts listed in `image_url_hosts` pass without a fetch. Loopback hosts are really fetched.
    The emulator's own image URLs on a non-loopback public URL are answered from its store.
    Any other host fails without a connection, as an unreachable image does.
    """
    host = urlsplit(url).hostname or ""
    if host in state.config.image_url_hosts:
        return True
    if imagefetch.is_loopback_url(url):
        problem = await imagefetch.check_image(url, state.config.image_fetch_timeout_seconds)
    elif _own_image_known(state, url):
        problem = None
    else:
        problem = "not a loopback host, nor listed in image_url_hosts; not fetched"
    if problem is not None:
        logger.info("image URL refused (%s): %s", problem, url)
    return problem is None


def _settings(plan: validation.GenerationPlan) -> dict[str, object]:
    """`ImageGenerationSettingsResponse`, field order and omitempty as in sc-go."""
    settings: dict[str, object] = {
        "model_id": plan.model_id,
        "scheduler_id": plan.scheduler_id,
        "width": plan.width,
        "height": plan.height,
        "num_outputs": plan.num_outputs,
        "guidance_scale": gojson.Float32(plan.guidance_scale),
        "inference_steps": plan.inference_steps,
        "seed": plan.seed,
    }
    if plan.init_image_url:
        settings["init_image_url"] = plan.init_image_url
    if plan.prompt_strength is not None:
        settings["prompt_strength"] = gojson.Float32(plan.prompt_strength)
    return settings


def _is_nsfw(plan: validation.GenerationPlan, words: tuple[str, ...]) -> bool:
    prompt = plan.prompt.casefold()
    return any(word.casefold() in prompt for word in words)


def _malformed_body(variant: str, outputs: list[dict[str, object]]) -> web.Response:
    if variant == "not_json":
        return web.Response(
            status=200,
            body=b"<html><body>upstream said hello</body></html>",
            headers={"Content-Type": "text/html"},
        )
    if variant == "empty":
        return web.Response(status=200, body=b"", headers={"Content-Type": "application/json"})
    if variant == "truncated":
        text = gojson.dumps({"outputs": outputs, "remaining_credits": 0})
        return web.Response(
            status=200, body=text[: len(text) // 2], headers={"Content-Type": "application/json"}
        )
    if variant == "missing_fields":
        return go_json(200, {"outputs": [{"id": str(uuid.uuid4())}]})
    return go_json(200, {"outputs": "nope"})


async def _run_worker(
    state: EmulatorState,
    account: Account,
    plan: validation.GenerationPlan,
    fault: Fault | None,
    remaining_credits: int,
) -> web.StreamResponse:
    """The GPU worker's part, after the credits were taken. Runs to completion even if the
    client goes away; refunds on failure or timeout."""
    settings = _settings(plan)
    try:
        extra = fault.float_param("seconds") if fault and fault.mode is FaultMode.DELAY else 0.0
        work = state.config.latency_seconds + extra
        timeout = state.config.worker_timeout_seconds
        if work > timeout:
            await asyncio.sleep(timeout)
            state.ledger.refund(account.token_sha256, plan.cost)
            return go_json(500, {"error": "TIMEOUT", "settings": settings})
        await asyncio.sleep(work)
        if fault and fault.mode is FaultMode.WORKER_FAILURE:
            state.ledger.refund(account.token_sha256, plan.cost)
            return go_json(500, {"error": fault.str_param("error"), "settings": settings})

        kept = plan.num_outputs
        if fault and fault.mode is FaultMode.FILTER_OUTPUTS:
            # As the NSFW filter: outputs silently missing, and no refund for them.
            kept = max(plan.num_outputs - fault.int_param("drop"), 0)
        outputs: list[dict[str, object]] = []
        for index in range(kept):
            output_id = uuid.uuid4()
            state.store.register(output_id, _render_params(plan, index))
            url = f"{state.public_url}/images/{output_id}.jpeg"
            outputs.append({"id": output_id, "url": url, "image_url": url})
        if fault and fault.mode is FaultMode.MALFORMED_SUCCESS:
            return _malformed_body(fault.str_param("variant"), outputs)
        return go_json(
            200,
            {"outputs": outputs, "remaining_credits": remaining_credits, "settings": settings},
        )
    finally:
        state.throttler.finished(account.token_sha256)


def _render_params(plan: validation.GenerationPlan, index: int) -> RenderParams:
    return RenderParams(
        prompt=plan.prompt,
        negative_prompt=plan.negative_prompt,
        model_id=str(plan.model_id),
        scheduler_id=str(plan.scheduler_id),
        width=plan.width,
        height=plan.height,
        guidance_scale=plan.guidance_scale,
        inference_steps=plan.inference_steps,
        seed=plan.seed,
        output_index=index,
        init_image_url=plan.init_image_url,
        prompt_strength=plan.prompt_strength,
    )


async def create_generation(request: web.Request) -> web.StreamResponse:
    """POST /v1/image/generation/create (sc-go `HandleCreateGenerationToken`)."""
    state = request.app[STATE_KEY]
    record = request[RECORD_KEY]
    account = state.authenticate(request.headers.get("Authorization"))
    if account is None:
        return go_json(401, {"error": "Unauthorized"})

    fault = state.faults.take()
    mode = fault.mode if fault else None
    record.fault = str(mode) if mode else None
    if fault and mode is FaultMode.HTTP_STATUS and not fault.flag("charge"):
        return go_text(fault.int_param("status"), fault.str_param("body"))
    if fault and mode is FaultMode.DROP_CONNECTION and not fault.flag("charge"):
        return drop_connection(request)

    if fault and mode is FaultMode.RATE_LIMIT:  # refused requests are not counted
        limit = state.config.rate_limit_per_second or 10  # show the real limit when off
        shown = RateDecision(False, limit, 0, int(time.time()) + 1)
        return too_many_requests(shown, fault.optional_int_param("retry_after"))
    refusal, headers = limited(request, state, CREATE_RATE_SCALE)
    if refusal is not None:
        return refusal

    try:
        parsed = validation.parse_request(await request.read())
    except validation.JsonParseError:
        return go_json(400, {"error": "json_parse_error"}, headers)
    if mode is FaultMode.BANNED:
        return go_json(403, {"error": "user_banned"}, headers)
    try:
        plan = validation.plan_from_request(parsed, state.random_seed)
    except validation.ServerPanic:
        return drop_connection(request)
    except validation.RequestValidationError as exc:
        return go_json(400, {"error": str(exc)}, headers)
    settings = _settings(plan)

    def fail(status: int, error: str) -> web.Response:
        return go_json(status, {"error": error, "settings": settings}, headers)

    if fault and mode is FaultMode.INTERNAL_ERROR:
        if fault.flag("with_settings"):
            return fail(500, UNKNOWN_ERROR)
        return go_json(500, {"error": UNKNOWN_ERROR}, headers)
    # As in sc-go CreateGeneration: after validation, before the queue and the credits.
    if mode is FaultMode.IMAGE_URL_ERROR:
        return fail(400, IMAGE_URL_ERROR)
    for url, is_mask in ((plan.init_image_url, False), (plan.mask_image_url, True)):
        if url and validation.is_valid_http_url(url):
            if not await http_image_ok(state, url):
                return fail(400, IMAGE_URL_ERROR)
            continue
        problem = validation.image_url_error(
            url, account.owner_prefix, mask=is_mask, uploaded=state.uploads
        )
        if problem:
            return fail(*problem)

    if mode is FaultMode.QUEUE_FULL:
        return fail(400, "queue_limit_reached")
    config = state.config
    try:
        await state.throttler.wait_for_turn(
            account.token_sha256,
            config.queue_limit,
            config.queue_overflow_max,
            config.queue_poll_interval_seconds,
        )
    except QueueFull:
        return fail(400, "queue_limit_reached")
    if state.closing:
        return drop_connection(request)

    if mode is FaultMode.INSUFFICIENT_CREDITS:
        return fail(400, "insufficient_credits")
    try:
        remaining = state.ledger.deduct(account.token_sha256, plan.cost)
    except InsufficientCredits:
        return fail(400, "insufficient_credits")
    # The moderation check runs inside the deduction's transaction: a refusal rolls it back.
    if mode is FaultMode.NSFW_PROMPT or _is_nsfw(plan, config.nsfw_words):
        state.ledger.refund(account.token_sha256, plan.cost)
        return fail(400, "nsfw_prompt")

    state.generation_count += 1
    state.throttler.started(account.token_sha256)
    job = asyncio.create_task(_run_worker(state, account, plan, fault, remaining))
    state.jobs.add(job)
    job.add_done_callback(state.jobs.discard)
    # Like the real handler, keep going if the client leaves, but note it as soon as it does.
    with state.disconnects.watching(request, record):
        response = await asyncio.shield(job)
    if fault and mode is FaultMode.DROP_CONNECTION:
        return drop_connection(request)
    if fault and mode is FaultMode.HTTP_STATUS:
        return go_text(fault.int_param("status"), fault.str_param("body"))
    response.headers.update(headers)
    if fault and mode is FaultMode.RESET_MID_RESPONSE:
        return await _reset_mid_response(request, response)
    if fault and mode is FaultMode.TRICKLE_BODY:
        return await _trickle(
            request, response, fault.float_param("seconds"), fault.int_param("chunk_bytes")
        )
    return response


async def _streamed(
    request: web.Request, response: web.StreamResponse
) -> tuple[web.StreamResponse, bytes]:
    """`response` as a prepared StreamResponse announcing its whole body, and that body."""
    assert isinstance(response, web.Response)
    body = response.body
    assert isinstance(body, bytes)
    stream = web.StreamResponse(
        status=response.status,
        headers={k: v for k, v in response.headers.items() if k.lower() != "content-length"},
    )
    stream.content_length = len(body)
    await stream.prepare(request)
    return stream, body


async def _reset_mid_response(
    request: web.Request, response: web.StreamResponse
) -> web.StreamResponse:
    """Send the status, the headers and half the body, then reset the connection (RST), as
    a crashing proxy or a broken link does once the generation was paid for."""
    record = request[RECORD_KEY]
    stream, body = await _streamed(request, response)
    await stream.write(body[: len(body) // 2])
    record.status = stream.status
    record.connection_dropped = True
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: close() sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return stream


async def _trickle(
    request: web.Request, response: web.StreamResponse, seconds: float, chunk_bytes: int
) -> web.StreamResponse:
    """Send the answer's body in `chunk_bytes` pieces spread over `seconds`."""
    stream, body = await _streamed(request, response)
    chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    pause = seconds / max(len(chunks), 1)
    try:
        for chunk in chunks:
            await asyncio.sleep(pause)
            await stream.write(chunk)
        await stream.write_eof()
    except ConnectionError:  # the client left mid-body; the generation stays charged
        request[RECORD_KEY].client_disconnected = True
    return stream


def _authenticated_or_limited(
    request: web.Request, state: EmulatorState
) -> tuple[Account | None, web.Response | None, dict[str, str]]:
    account = state.authenticate(request.headers.get("Authorization"))
    if account is None:
        return None, go_json(401, {"error": "Unauthorized"}), {}
    refusal, headers = limited(request, state, OTHER_RATE_SCALE)
    return account, refusal, headers


async def get_credits(request: web.Request) -> web.StreamResponse:
    """GET /v1/credits (sc-go `HandleQueryCredits`); one credit line per emulated account."""
    state = request.app[STATE_KEY]
    account, refusal, headers = _authenticated_or_limited(request, state)
    if refusal is not None or account is None:
        return refusal or go_json(401, {"error": "Unauthorized"})
    balance = state.ledger.balance(account.token_sha256)
    credit: dict[str, Any] = {
        "id": uuid.uuid5(CREDIT_TYPE_ID, account.token_sha256),
        "remaining_amount": balance,
        "expires_at": CREDITS_EXPIRE_AT,
        "type": {
            "id": CREDIT_TYPE_ID,
            "name": "Emulator",
            "amount": account.initial_credits,
            "description": "Credits granted by the Stablecog emulator",
        },
    }
    return go_json(200, {"total_remaining_credits": balance, "credits": [credit]}, headers)


async def get_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/image/generation/models: active models with their schedulers (no auth; rate
    limited on the shared counter)."""
    refusal, headers = limited(request, request.app[STATE_KEY], OTHER_RATE_SCALE)
    if refusal is not None:
        return refusal
    models = []
    for model in catalog.active_models():
        schedulers = [catalog.get_scheduler(sid) for sid in model.scheduler_ids]
        models.append(
            {
                "id": model.id,
                "name": model.name,
                "is_default": model.is_default,
                "available_schedulers": [{"id": s.id, "name": s.name} for s in schedulers if s],
                "default_width": model.default_width,
                "default_height": model.default_height,
            }
        )
    return go_json(200, {"models": models}, headers)


async def get_defaults(request: web.Request) -> web.StreamResponse:
    """GET /v1/image/generation/defaults: note the global scheduler and fixed 30 steps,
    which can differ from what create uses (docs/upstream-api.md#defaults-endpoint). No auth;
    rate limited on the shared counter."""
    refusal, headers = limited(request, request.app[STATE_KEY], OTHER_RATE_SCALE)
    if refusal is not None:
        return refusal
    model = catalog.default_model()
    return go_json(
        200,
        {
            "model_id": model.id,
            "scheduler_id": catalog.GLOBAL_DEFAULT_SCHEDULER_ID,
            "width": model.default_width,
            "height": model.default_height,
            "num_outputs": validation.DEFAULT_NUM_OUTPUTS,
            "guidance_scale": gojson.Float32(validation.DEFAULT_GUIDANCE_SCALE),
            "inference_steps": validation.DEFAULT_INFERENCE_STEPS,
            "prompt_strength": gojson.Float32(validation.DEFAULT_PROMPT_STRENGTH),
        },
        headers,
    )


async def health(request: web.Request) -> web.StreamResponse:
    """GET /v1/health."""
    return go_json(200, {"status": "ok"})


async def get_image(request: web.Request) -> web.StreamResponse:
    """GET /images/<id>.jpeg: the output's JPEG, rendered on first fetch."""
    state = request.app[STATE_KEY]
    image_id = _image_id(request.match_info["name"])
    params = state.store.params(image_id) if image_id else None
    if params is None:
        return not_found()
    data = state.store.cached(params)
    if data is None:
        data = await asyncio.to_thread(render_jpeg, params)
        state.store.put(params, data)
    return web.Response(
        body=data,
        headers={"Content-Type": "image/jpeg", "Cache-Control": "public, max-age=31536000"},
    )
