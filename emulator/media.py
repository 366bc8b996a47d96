"""Handlers of the emulated image endpoints beyond generation: upload and upscale.

POST /v1/image/upload runs: auth, injected fault, rate limit (declared 2/s), ban, the
account's credits (an account with none is refused, nothing is charged), the multipart
`file` (at most 10 MB, sniffed as JPEG, PNG or WebP), then answers the object's `s3://` key
under the owner's prefix, which a generation then accepts as `init_image_url`.

POST /v1/image/upscale/create (and its alias /v1/image/upscale) runs like a generation:
auth, injected fault, rate limit (declared 5/s, as create), JSON decoding, ban, the input
and model checks (before any credit moves), one credit deducted, then the worker (latency,
failure or timeout, refunded on failure). The error codes for a bad input or model are
ASSUMED (docs/upstream-api.md#upscale-endpoint); the envelope is the generation's.

Both take the next injected fault, as generations do (emulator.faults); modes that do not
apply to the endpoint are used up without effect.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace

from aiohttp import BodyPartReader, MultipartReader, StreamReader, web

from emulator import catalog, uploads, validation
from emulator.accounts import Account, InsufficientCredits
from emulator.api import (
    CREATE_RATE_SCALE,
    IMAGE_URL_ERROR,
    client_ip,
    drop_connection,
    go_json,
    go_text,
    http_image_ok,
    limited,
    too_many_requests,
)
from emulator.faults import Fault, FaultMode
from emulator.images import RenderParams
from emulator.ratelimit import RateDecision
from emulator.state import RECORD_KEY, STATE_KEY, EmulatorState

# The upload route declares 2/s against create's 5/s; the limit keeps that ratio.
UPLOAD_RATE_NUMERATOR, UPLOAD_RATE_DENOMINATOR = 2, 5
UPSCALE_FACTOR = 2
MAX_UPSCALED_SIDE = 2048
# ASSUMED error codes (no public source shows the upscale handler's).
INVALID_INPUT = "invalid_input"
OUTPUT_NOT_FOUND = "output_not_found"
INVALID_UPSCALE_MODEL = "invalid_model_id"


def _early_fault(
    request: web.Request, state: EmulatorState
) -> tuple[Fault | None, web.Response | None]:
    """Take the next fault; answer at once for the modes that act before the handler."""
    fault = state.faults.take()
    request[RECORD_KEY].fault = str(fault.mode) if fault else None
    if fault is None:
        return None, None
    if fault.mode is FaultMode.HTTP_STATUS and not fault.flag("charge"):
        return fault, go_text(fault.int_param("status"), fault.str_param("body"))
    if fault.mode is FaultMode.DROP_CONNECTION and not fault.flag("charge"):
        return fault, drop_connection(request)
    if fault.mode is FaultMode.RATE_LIMIT:
        limit = state.config.rate_limit_per_second or 10
        shown = RateDecision(False, limit, 0, int(time.time()) + 1)
        return fault, too_many_requests(shown, fault.int_param("retry_after"))
    return fault, None


def _upload_limited(
    request: web.Request, state: EmulatorState
) -> tuple[web.Response | None, dict[str, str]]:
    rate = state.config.rate_limit_per_second
    if rate <= 0:
        return None, {}
    limit = max(1, rate * UPLOAD_RATE_NUMERATOR // UPLOAD_RATE_DENOMINATOR)
    decision = state.limiter.check("api:" + client_ip(request), limit)
    if not decision.allowed:
        return too_many_requests(decision, 1), {}
    return None, decision.headers()


async def _read_file(request: web.Request) -> bytes | str:
    """The multipart `file` part's bytes, or the error code: `parse_error` when the body is
    not multipart, `invalid_file` when there is no `file` part or it is over 10 MB."""
    body = await request.read()  # already read whole by the recording middleware
    # A limit above the body: feeding it whole must never pause the real connection.
    limit = max(2**16, len(body) + 1)
    stream = StreamReader(request.protocol, limit, loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    try:
        reader = MultipartReader(request.headers, stream)
    except (AssertionError, ValueError, KeyError):
        return "parse_error"
    try:
        while True:
            part = await reader.next()
            if part is None:
                return "invalid_file"
            if isinstance(part, BodyPartReader) and part.name == "file":
                data = bytearray()
                while chunk := await part.read_chunk():
                    data += chunk
                    if len(data) > uploads.MAX_UPLOAD_BYTES:
                        return "invalid_file"
                return bytes(data)
    except (ValueError, RuntimeError, AssertionError):
        return "parse_error"


async def upload_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/image/upload (sc-go `uploadapi/api/controller.go`)."""
    state = request.app[STATE_KEY]
    account = state.authenticate(request.headers.get("Authorization"))
    if account is None:
        return go_json(401, {"error": "Unauthorized"})
    fault, early = _early_fault(request, state)
    if early is not None:
        return early
    refusal, headers = _upload_limited(request, state)
    if refusal is not None:
        return refusal
    mode = fault.mode if fault else None
    if mode is FaultMode.BANNED:
        return go_json(403, {"error": "user_banned"}, headers)
    if mode is FaultMode.INTERNAL_ERROR:
        return go_json(500, {"error": "An unknown error has occured"}, headers)
    if mode is FaultMode.INSUFFICIENT_CREDITS or state.ledger.balance(account.token_sha256) <= 0:
        return go_json(400, {"error": "insufficient_credits"}, headers)
    data = await _read_file(request)
    if isinstance(data, str):
        return go_json(400, {"error": data}, headers)
    extension = uploads.sniff_extension(data)
    if extension is None:
        return go_json(400, {"error": "invalid_content_type"}, headers)
    key = f"{account.owner_prefix}{uuid.uuid4()}.{extension}"
    state.uploads.add(key, extension)
    if fault and mode is FaultMode.DROP_CONNECTION:  # stored, then the answer is lost
        return drop_connection(request)
    return go_json(200, {"object": f"s3://{key}"}, headers)


def _upscale_source(state: EmulatorState, text: str) -> tuple[uuid.UUID | None, str | None]:
    """(the output ID, or None for a URL input; the error code, or None)."""
    try:
        output_id = uuid.UUID(text) if len(text) == 36 else None
    except ValueError:
        output_id = None
    if output_id is not None:
        return output_id, None if state.store.params(output_id) is not None else OUTPUT_NOT_FOUND
    if validation.is_valid_http_url(text):
        return None, None
    return None, INVALID_INPUT


def _upscaled_params(
    state: EmulatorState, source: uuid.UUID | None, url: str, model: str
) -> RenderParams:
    params = state.store.params(source) if source is not None else None
    if params is None:  # a URL: a stand-in picture of its own, decided by the URL
        params = RenderParams(url, "", model, "", 1024, 1024, 0.0, 0, 0, 0)
    return replace(
        params,
        width=min(params.width * UPSCALE_FACTOR, MAX_UPSCALED_SIDE),
        height=min(params.height * UPSCALE_FACTOR, MAX_UPSCALED_SIDE),
        negative_prompt=params.negative_prompt + f" [upscaled by {model}]",
    )


async def _run_upscale(
    state: EmulatorState,
    account: Account,
    settings: dict[str, object],
    source: uuid.UUID | None,
    fault: Fault | None,
    remaining: int,
) -> web.Response:
    """The worker's part, after the credit was taken; refunds on failure or timeout."""
    mode = fault.mode if fault else None
    extra = fault.float_param("seconds") if fault and mode is FaultMode.DELAY else 0.0
    work = state.config.latency_seconds + extra
    if work > state.config.worker_timeout_seconds:
        await asyncio.sleep(state.config.worker_timeout_seconds)
        state.ledger.refund(account.token_sha256, 1)
        return go_json(500, {"error": "TIMEOUT", "settings": settings})
    await asyncio.sleep(work)
    if fault and mode is FaultMode.WORKER_FAILURE:
        state.ledger.refund(account.token_sha256, 1)
        return go_json(500, {"error": fault.str_param("error"), "settings": settings})
    source_url = str(settings["input"])
    if source is not None:
        source_url = f"{state.public_url}/images/{source}.jpeg"
    upscaled_id = uuid.uuid4()
    state.store.register(
        upscaled_id, _upscaled_params(state, source, source_url, str(settings["model_id"]))
    )
    output = {
        "id": source or uuid.uuid4(),
        "url": source_url,
        "image_url": source_url,
        "upscaled_image_url": f"{state.public_url}/images/{upscaled_id}.jpeg",
    }
    return go_json(200, {"outputs": [output], "remaining_credits": remaining, "settings": settings})


async def create_upscale(request: web.Request) -> web.StreamResponse:
    """POST /v1/image/upscale/create (sc-go `requests.CreateUpscaleRequest`,
    `scworker/upscale.go`)."""
    state = request.app[STATE_KEY]
    account = state.authenticate(request.headers.get("Authorization"))
    if account is None:
        return go_json(401, {"error": "Unauthorized"})
    fault, early = _early_fault(request, state)
    if early is not None:
        return early
    refusal, headers = limited(request, state, CREATE_RATE_SCALE)
    if refusal is not None:
        return refusal
    mode = fault.mode if fault else None
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    raw_model = body.get("model_id") if isinstance(body, dict) else None
    model_id = validation.parse_go_uuid(raw_model) if isinstance(raw_model, str) else None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("input", ""), str)
        or (raw_model is not None and model_id is None)
    ):
        return go_json(400, {"error": "json_parse_error"}, headers)
    if mode is FaultMode.BANNED:
        return go_json(403, {"error": "user_banned"}, headers)
    text = str(body.get("input", ""))
    source, problem = _upscale_source(state, text)
    if problem is None and source is None and not await http_image_ok(state, text):
        problem = IMAGE_URL_ERROR
    model = catalog.get_upscale_model(model_id) if model_id else catalog.default_upscale_model()
    if problem is None and model is None:
        problem = INVALID_UPSCALE_MODEL
    if problem is not None:
        return go_json(400, {"error": problem}, headers)
    assert model is not None
    settings: dict[str, object] = {"model_id": model.id, "input": text}
    if mode is FaultMode.INTERNAL_ERROR:
        return go_json(500, {"error": "An unknown error has occured"}, headers)
    if mode is FaultMode.INSUFFICIENT_CREDITS:
        return go_json(400, {"error": "insufficient_credits", "settings": settings}, headers)
    try:
        remaining = state.ledger.deduct(account.token_sha256, 1)
    except InsufficientCredits:
        return go_json(400, {"error": "insufficient_credits", "settings": settings}, headers)
    state.upscale_count += 1
    job = asyncio.create_task(_run_upscale(state, account, settings, source, fault, remaining))
    state.jobs.add(job)
    job.add_done_callback(state.jobs.discard)
    response = await asyncio.shield(job)  # the worker finishes even if the client leaves
    if fault and mode is FaultMode.DROP_CONNECTION:
        return drop_connection(request)
    if fault and mode is FaultMode.HTTP_STATUS:
        return go_text(fault.int_param("status"), fault.str_param("body"))
    response.headers.update(headers)
    return response
