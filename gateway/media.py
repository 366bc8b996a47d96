"""Pure rules and translation for the image RPCs beyond generation: UploadImage and
CreateUpscale (docs/upstream-api.md#upload-endpoint, docs/upstream-api.md#upscale-endpoint).
No I/O.

Sniffing is three fixed signatures, the ones Go's `http.DetectContentType` (the upstream's
sniffer) uses for the accepted types; a library (python-magic, filetype) would add a
dependency and recognise many types only to refuse them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.cache_key import KEY_PREFIX
from gateway.errors import UpstreamBadResponse

# "At most 10 MB": the stricter reading, so the gateway never sends what may be refused.
MAX_UPLOAD_BYTES = 10_000_000
# What the call runner accepts for UploadImage: room for the largest file and the message's
# framing, and a margin so an oversized file still gets a BadRequest naming `file` (the
# server's own limit, gateway.app, is above this).
MAX_UPLOAD_REQUEST_BYTES = 12 * 1024 * 1024

# (pattern, mask, content type), as Go's http.DetectContentType matches them.
_SIGNATURES: tuple[tuple[bytes, bytes, str], ...] = (
    (b"\xff\xd8\xff", b"\xff\xff\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", b"\xff" * 8, "image/png"),
    (b"RIFF\0\0\0\0WEBPVP", b"\xff\xff\xff\xff\0\0\0\0\xff\xff\xff\xff\xff\xff", "image/webp"),
)
EXTENSIONS = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
_UUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")


def sniff_content_type(data: bytes) -> str | None:
    """`image/jpeg`, `image/png` or `image/webp` as the first bytes say, else None."""
    for pattern, mask, content_type in _SIGNATURES:
        head = data[: len(pattern)]
        if len(head) == len(pattern) and all(
            b & m == p for b, m, p in zip(head, mask, pattern, strict=True)
        ):
            return content_type
    return None


def upload_from_body(body: bytes, content_type: str) -> generation_pb2.UploadImageResponse:
    """The upload's `{"object": "s3://..."}` answer; UpstreamBadResponse when it is not that."""
    data = _object(body)
    url = data.get("object") if data is not None else None
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise UpstreamBadResponse("Stablecog's upload answer is not the documented shape")
    return generation_pb2.UploadImageResponse(object=url, content_type=content_type)


def is_output_id(text: str) -> bool:
    """Whether an upscale `input` names a generation output (a UUID), not a URL."""
    return bool(_UUID.match(text))


def upscale_to_json(request: generation_pb2.CreateUpscaleRequest) -> dict[str, Any]:
    """The REST body: `input`, and `model_id` only when set (else the upstream's default)."""
    body: dict[str, Any] = {"input": request.input}
    if request.HasField("model_id"):
        body["model_id"] = request.model_id
    return body


def upscale_from_body(body: bytes) -> generation_pb2.CreateUpscaleResponse:
    """The 200 answer of an upscale; UpstreamBadResponse (it was charged) when it is not
    the documented shape."""
    data = _object(body)
    response = generation_pb2.CreateUpscaleResponse()
    try:
        assert data is not None
        for item in data["outputs"]:
            response.outputs.add(
                id=str(item["id"]),
                url=str(item.get("url", "")),
                image_url=str(item.get("image_url", "")),
                upscaled_image_url=str(item["upscaled_image_url"]),
            )
        response.remaining_credits = float(data["remaining_credits"])
        settings = data.get("settings") or {}
        response.settings.model_id = str(settings.get("model_id", ""))
        response.settings.input = str(settings.get("input", ""))
    except (AssertionError, KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise UpstreamBadResponse(
            "Stablecog answered the upscale (and charged for it) with a body that is not the "
            "documented shape"
        ) from None
    if not response.outputs:
        raise UpstreamBadResponse("Stablecog's upscale answer has no output (it was charged)")
    return response


def upscale_cache_key(request: generation_pb2.CreateUpscaleRequest, scope: str) -> str | None:
    """The store key of an upscale of a generation output within an account scope, or None
    for an image URL (the bytes behind a URL may change; an output never does)."""
    if not is_output_id(request.input):
        return None
    model = request.model_id.lower() if request.HasField("model_id") else "default"
    canonical = json.dumps(
        {"scope": scope, "upscale": {"input": request.input.lower(), "model_id": model}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return KEY_PREFIX + "upscale:" + hashlib.sha256(canonical.encode()).hexdigest()


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None
