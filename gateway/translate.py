"""Pure translation between the gRPC messages and the upstream's REST JSON.

No I/O here. The request side is derived from the contract: every field of
`GenerationRequest` is sent under its proto name (which is the REST JSON name). A field
with presence that is unset is left out of the JSON body (the upstream applies its own
default); a set field is sent even when it holds a zero value. A response that is not
the documented shape raises `UpstreamBadResponse`; unknown extra JSON fields are ignored.

A 200's body is parsed with orjson (0.8 us against json's 3.5 for the documented answer;
every miss parses one). It is stricter than json, which Stablecog's Go encoder never
needs: UTF-8 without a byte-order mark only (json also read UTF-16 and UTF-32), no NaN,
Infinity or number past a double's range anywhere (json read them, and refused them only
in a field the gateway reads), no lone surrogate and no nesting past 1,024 levels (json
read those, and the call then failed as INTERNAL with no credits counted). Each is "not
JSON": an UpstreamBadResponse, which says the call may have been charged. An integer
past 64 bits is read as a float (and refused as out of range in a field that holds one).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.errors import MAY_HAVE_BEEN_CHARGED, UpstreamBadResponse

# (name, has presence, is a float32) for every request field, from the contract.
_REQUEST_FIELDS = tuple(
    (field.name, field.has_presence, field.type == FieldDescriptor.TYPE_FLOAT)
    for field in generation_pb2.GenerationRequest.DESCRIPTOR.fields
)


def request_to_json(request: generation_pb2.GenerationRequest) -> dict[str, Any]:
    """The REST body for `request`: the fields without presence, and the others when set."""
    body: dict[str, Any] = {}
    for name, has_presence, is_float in _REQUEST_FIELDS:
        if has_presence and not request.HasField(name):  # type: ignore[arg-type]
            continue
        value = getattr(request, name)
        # proto floats are float32; send the shortest decimal that round-trips to it.
        body[name] = _float32_decimal(value) if is_float else value
    return body


def _float32_decimal(value: float) -> float:
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if _as_float32(candidate) == _as_float32(value):
            return candidate
    return value


def _as_float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def response_from_body(body: bytes) -> generation_pb2.GenerationResponse:
    """The GenerationResponse for the bytes of a 200 answer; UpstreamBadResponse if malformed."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("the body is not JSON") from None
    return response_from_json(payload)


def response_from_json(payload: Any) -> generation_pb2.GenerationResponse:
    """The GenerationResponse for a parsed 200 body; UpstreamBadResponse if it is malformed."""
    if not isinstance(payload, dict):
        raise _bad("the body is not a JSON object")
    outputs = payload.get("outputs")
    if not isinstance(outputs, list):
        raise _bad("`outputs` is not a list")
    response = generation_pb2.GenerationResponse(
        remaining_credits=_number(payload, "remaining_credits"),
    )
    for index, item in enumerate(outputs):
        if not isinstance(item, dict):
            raise _bad(f"`outputs[{index}]` is not an object")
        url = _string(item, "url", f"outputs[{index}].")
        image_url = item.get("image_url", url)
        if not isinstance(image_url, str):
            raise _bad(f"`outputs[{index}].image_url` is not a string")
        response.outputs.add(
            id=_string(item, "id", f"outputs[{index}]."), url=url, image_url=image_url
        )
    _fill_settings(response.settings, payload.get("settings"))
    return response


def _fill_settings(settings: generation_pb2.Settings, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise _bad("`settings` is not an object")
    settings.model_id = _string(raw, "model_id", "settings.")
    settings.scheduler_id = _string(raw, "scheduler_id", "settings.")
    settings.width = _integer(raw, "width", "settings.")
    settings.height = _integer(raw, "height", "settings.")
    settings.num_outputs = _integer(raw, "num_outputs", "settings.")
    settings.guidance_scale = _number(raw, "guidance_scale", "settings.")
    settings.inference_steps = _integer(raw, "inference_steps", "settings.")
    # omitempty upstream: absent means "not applicable", not zero.
    if raw.get("seed") is not None:
        settings.seed = _integer(raw, "seed", "settings.", bits=64)
    if raw.get("init_image_url"):
        settings.init_image_url = _string(raw, "init_image_url", "settings.")
    if raw.get("prompt_strength") is not None:
        settings.prompt_strength = _number(raw, "prompt_strength", "settings.")


def _bad(what: str) -> UpstreamBadResponse:
    # A 200 is what Stablecog sends once it has charged (or something posing as it).
    return UpstreamBadResponse(
        f"the upstream answered 200 with an unexpected body ({what}); {MAY_HAVE_BEEN_CHARGED}"
    )


def _string(obj: dict[str, Any], key: str, prefix: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _bad(f"`{prefix}{key}` is not a string")
    return value


# The half-open range of a signed integer of each width the settings use.
_INTEGER_RANGES = {bits: (-(2 ** (bits - 1)), 2 ** (bits - 1)) for bits in (32, 64)}


def _integer(obj: dict[str, Any], key: str, prefix: str = "", bits: int = 32) -> int:
    value = obj.get(key)
    low, high = _INTEGER_RANGES[bits]
    if type(value) is int:  # the usual answer: not a bool, not a float
        if low <= value < high:
            return value
        raise _bad(f"`{prefix}{key}` is out of range")
    if not isinstance(value, float):
        raise _bad(f"`{prefix}{key}` is not a number")
    if not value.is_integer():
        raise _bad(f"`{prefix}{key}` is not an integer")
    # orjson reads an integer past 64 bits as a float, rounded: one just below the lowest
    # would round to the lowest itself, so the ends are out of range for a float.
    if not low < value < high:
        raise _bad(f"`{prefix}{key}` is out of range")
    return int(value)


def _number(obj: dict[str, Any], key: str, prefix: str = "") -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"`{prefix}{key}` is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise _bad(f"`{prefix}{key}` is not finite")
    return number
