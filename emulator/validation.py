"""The create-generation request as sc-go handles it: decode, apply defaults, validate, format.

Mirrors `server/requests/create_generation.go` and `utils/format.go`: the body is decoded like
Go's `json.Unmarshal` into the request struct, defaults are applied, checks run in the server's
order with its exact messages, and the prompt is normalised. Pure code. The rules it follows:
docs/upstream-api.md#request-body, docs/upstream-api.md#defaults,
docs/upstream-api.md#validation and docs/upstream-api.md#prompt-formatting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from urllib.parse import urlsplit
from uuid import UUID

from emulator import catalog
from emulator.gojson import to_float32

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

MIN_SIZE, MAX_SIZE = 256, 1536
MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE = 1.0, 30.0
MIN_INFERENCE_STEPS = 10
MAX_PIXEL_STEPS = 1024 * 1024 * 30
MAX_NUM_OUTPUTS = 4
DEFAULT_INFERENCE_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.0
DEFAULT_NUM_OUTPUTS = 2
DEFAULT_PROMPT_STRENGTH = 0.5
MAX_PROMPT_LENGTH = 500
SEED_LIMIT = 2**31 - 1  # Go's rand.Intn(math.MaxInt32): [0, 2**31 - 2]
IMAGE_URL_PREFIXES = ("s3://", "http://", "https://")


class JsonParseError(Exception):
    """The body is not what `json.Unmarshal` accepts for the struct (400 json_parse_error)."""


class RequestValidationError(Exception):
    """A `Validate` failure; `str(exc)` is the exact message the server sends."""


class ServerPanic(Exception):
    """Where sc-go dereferences nil and panics: the connection drops without a response."""


@dataclass
class CreateGenerationRequest:
    """sc-go's `requests.CreateGenerationRequest`; None is a nil pointer."""

    prompt: str = ""
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    inference_steps: int | None = None
    guidance_scale: float | None = None
    model_id: UUID | None = None
    scheduler_id: UUID | None = None
    seed: int | None = None
    num_outputs: int | None = None
    stream_id: str = ""
    ui_id: str = ""
    init_image_url: str = ""
    mask_image_url: str = ""
    prompt_strength: float | None = None
    submit_to_gallery: bool = False
    process_type: str = ""
    output_image_extension: str = ""
    was_auto_submitted: bool = False


# JSON key -> (attribute, kind). Kinds ending in "*" are pointers: JSON null resets them.
_FIELDS: dict[str, tuple[str, str]] = {
    "prompt": ("prompt", "string"),
    "negative_prompt": ("negative_prompt", "string"),
    "width": ("width", "int32*"),
    "height": ("height", "int32*"),
    "inference_steps": ("inference_steps", "int32*"),
    "guidance_scale": ("guidance_scale", "float32*"),
    "model_id": ("model_id", "uuid*"),
    "scheduler_id": ("scheduler_id", "uuid*"),
    "seed": ("seed", "int64*"),
    "num_outputs": ("num_outputs", "int32*"),
    "stream_id": ("stream_id", "string"),
    "ui_id": ("ui_id", "string"),
    "init_image_url": ("init_image_url", "string"),
    "mask_image_url": ("mask_image_url", "string"),
    "prompt_strength": ("prompt_strength", "float32*"),
    "submit_to_gallery": ("submit_to_gallery", "bool"),
    "process_type": ("process_type", "string"),
    "output_image_extension": ("output_image_extension", "string"),
    "WasAutoSubmitted": ("was_auto_submitted", "bool"),  # untagged Go field
}


def _fold(name: str) -> str:
    """encoding/json's key folding: ASCII upper-casing, unicode.ToUpper for the rest."""
    out = []
    for char in name:
        if char.isascii():
            out.append(char.upper())
        else:
            upper = char.upper()
            out.append(upper if len(upper) == 1 else char)
    return "".join(out)


# The JSON fields the upstream's request struct has (for tests of what the gateway sends).
REST_FIELDS = frozenset(_FIELDS)
_FIELDS_BY_FOLD = {_fold(key): value for key, value in _FIELDS.items()}


class _Pairs(list[tuple[str, object]]):
    """A decoded JSON object with its keys in order, duplicates kept (Go applies each)."""


class _HugeNumber:
    """A number literal too long for Python's int(); overflows every Go numeric type."""


def _parse_int_literal(text: str) -> object:
    return int(text) if len(text) <= 64 else _HugeNumber()


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid literal {name}")


_HEX = frozenset("0123456789abcdefABCDEF")


def parse_go_uuid(text: str) -> UUID | None:
    """github.com/google/uuid `Parse`, including its quirks; None where it returns an error."""
    raw = text.encode("utf-8")
    if len(raw) == 36 + 9:
        if raw[:9].lower() != b"urn:uuid:":
            return None
        raw = raw[9:]
    elif len(raw) == 36 + 2:
        raw = raw[1:]  # google/uuid skips the first byte and never checks the braces
    elif len(raw) == 32:
        hex_text = raw.decode("ascii", errors="replace")
        return UUID(hex=hex_text) if set(hex_text) <= _HEX else None
    elif len(raw) != 36:
        return None
    body = raw[:36].decode("ascii", errors="replace")
    if body[8] != "-" or body[13] != "-" or body[18] != "-" or body[23] != "-":
        return None
    hex_text = body.replace("-", "", 4)
    if len(hex_text) != 32 or not set(hex_text) <= _HEX:
        return None
    return UUID(hex=hex_text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _decode_value(kind: str, value: object) -> object:
    """Convert one JSON value for a field; raises JsonParseError as Go's decoder would fail."""
    if kind == "string":
        if isinstance(value, str):
            return _SURROGATE.sub("\ufffd", value)  # Go substitutes U+FFFD for bad escapes
        raise JsonParseError(f"cannot unmarshal {type(value).__name__} into string")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise JsonParseError("cannot unmarshal into bool")
    if kind in ("int32*", "int64*"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise JsonParseError(f"cannot unmarshal {value!r} into {kind[:-1]}")
        low, high = (INT32_MIN, INT32_MAX) if kind == "int32*" else (INT64_MIN, INT64_MAX)
        if not low <= value <= high:
            raise JsonParseError(f"number {value} overflows {kind[:-1]}")
        return value
    if kind == "float32*":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise JsonParseError("cannot unmarshal into float32")
        try:
            return to_float32(float(value))
        except OverflowError as exc:
            raise JsonParseError("number overflows float32") from exc
    if kind == "uuid*":
        if not isinstance(value, str):
            raise JsonParseError("cannot unmarshal non-string into uuid.UUID")
        parsed = parse_go_uuid(value)
        if parsed is None:
            raise JsonParseError("invalid UUID")
        return parsed
    raise AssertionError(kind)


def parse_request(body: bytes) -> CreateGenerationRequest:
    """`json.Unmarshal(body, &req)`: raises JsonParseError wherever Go returns an error."""
    text = body.decode("utf-8", errors="replace")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_Pairs,
            parse_int=_parse_int_literal,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise JsonParseError(str(exc)) from exc
    request = CreateGenerationRequest()
    if document is None:  # a top-level null leaves the struct untouched
        return request
    if not isinstance(document, _Pairs):
        raise JsonParseError("cannot unmarshal non-object into the request struct")
    for key, value in document:
        spec = _FIELDS.get(key) or _FIELDS_BY_FOLD.get(_fold(key))
        if spec is None:
            continue  # unknown fields are ignored
        attribute, kind = spec
        if value is None:
            if kind.endswith("*"):
                setattr(request, attribute, None)
            continue  # null leaves strings and bools as they were
        setattr(request, attribute, _decode_value(kind, value))
    return request


@dataclass(frozen=True)
class GenerationPlan:
    """A validated request: what the worker runs and what `settings` echoes."""

    prompt: str
    negative_prompt: str
    model_id: UUID
    scheduler_id: UUID
    width: int
    height: int
    num_outputs: int
    guidance_scale: float
    inference_steps: int
    requested_inference_steps: int
    seed: int
    init_image_url: str
    mask_image_url: str
    prompt_strength: float | None

    @property
    def cost(self) -> int:
        """Credits charged: one per output (`CreateGenerationRequest.Cost`)."""
        return self.num_outputs


def apply_defaults(request: CreateGenerationRequest, random_seed: Callable[[], int]) -> None:
    """`ApplyDefaults`; raises ServerPanic where sc-go dereferences a nil model."""
    if request.inference_steps is None:
        request.inference_steps = DEFAULT_INFERENCE_STEPS
    if request.guidance_scale is None:
        request.guidance_scale = DEFAULT_GUIDANCE_SCALE
    if request.num_outputs is None:
        request.num_outputs = DEFAULT_NUM_OUTPUTS
    if request.model_id is None:
        request.model_id = catalog.default_model().id
    if request.scheduler_id is None:
        request.scheduler_id = catalog.default_scheduler_id_for(request.model_id)
    if request.width is None or request.height is None:
        model = catalog.get_model(request.model_id)
        if model is None:
            raise ServerPanic("nil pointer dereference: unknown model without width/height")
        if request.width is None:
            request.width = model.default_width
        if request.height is None:
            request.height = model.default_height
    if request.init_image_url and request.prompt_strength is None:
        request.prompt_strength = DEFAULT_PROMPT_STRENGTH
    if request.seed is None or request.seed < 0:
        request.seed = random_seed()


def _int32_wrap(value: int) -> int:
    return (value - INT32_MIN) % 2**32 + INT32_MIN


def _has_image_prefix(url: str) -> bool:
    return url.startswith(IMAGE_URL_PREFIXES)


def validate(request: CreateGenerationRequest) -> None:
    """`Validate(api=true)` after defaults: the first failing check raises, in sc-go's order."""
    assert request.model_id is not None and request.scheduler_id is not None
    assert request.width is not None and request.height is not None
    assert request.inference_steps is not None and request.guidance_scale is not None
    assert request.num_outputs is not None
    if request.scheduler_id not in catalog.compatible_scheduler_ids(request.model_id):
        request.scheduler_id = catalog.default_scheduler_id_for(request.model_id)
    if request.height > MAX_SIZE:
        raise RequestValidationError(f"Height is too large, max is: {MAX_SIZE}")
    if request.height < MIN_SIZE:
        raise RequestValidationError(f"Height is too small, min is: {MIN_SIZE}")
    if request.width > MAX_SIZE:
        raise RequestValidationError(f"Width is too large, max is: {MAX_SIZE}")
    if request.width < MIN_SIZE:
        raise RequestValidationError(f"Width is too small, min is: {MIN_SIZE}")
    if request.guidance_scale < MIN_GUIDANCE_SCALE:
        raise RequestValidationError(f"Guidance scale is too small, min is: {MIN_GUIDANCE_SCALE:f}")
    if request.guidance_scale > MAX_GUIDANCE_SCALE:
        raise RequestValidationError(f"Guidance scale is too large, max is: {MAX_GUIDANCE_SCALE:f}")
    if request.inference_steps < MIN_INFERENCE_STEPS:
        raise RequestValidationError(f"Inference steps is too small, min is: {MIN_INFERENCE_STEPS}")
    # Computed in int32 by the server: a product that wraps negative passes the check.
    if _int32_wrap(request.width * request.height * request.inference_steps) > MAX_PIXEL_STEPS:
        raise RequestValidationError(
            "Pick fewer inference steps or smaller dimensions: "
            f"{request.width} - {request.height} - {request.inference_steps}"
        )
    if request.num_outputs < 0:
        request.num_outputs = DEFAULT_NUM_OUTPUTS
    if request.num_outputs > MAX_NUM_OUTPUTS:
        raise RequestValidationError(f"Number of outputs can't be more than {MAX_NUM_OUTPUTS}")
    if not catalog.is_valid_model_id(request.model_id):
        raise RequestValidationError("invalid_model_id")
    if catalog.get_scheduler(request.scheduler_id) is None:
        raise RequestValidationError("invalid_scheduler_id")
    if request.init_image_url and not _has_image_prefix(request.init_image_url):
        raise RequestValidationError("invalid_init_image_url")
    if request.mask_image_url and not _has_image_prefix(request.mask_image_url):
        raise RequestValidationError("invalid_mask_image_url")
    if request.prompt_strength is not None:
        request.prompt_strength = min(max(request.prompt_strength, 0.0), 1.0)


def is_valid_http_url(url: str) -> bool:
    """Approximates sc-go `utils.IsValidHTTPURL` (url.ParseRequestURI, http(s), a host)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket, which Go's parser rejects too
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not any(ch.isspace() or ord(ch) < 0x20 for ch in url)
    )


def image_url_error(
    url: str, owner_prefix: str, *, mask: bool, uploaded: Container[str] = ()
) -> tuple[int, str] | None:
    """What `CreateGeneration` says about an init (or mask) image URL that is not a valid
    http(s) URL, as (status, error); None for an empty or a valid http(s) URL, whose image the
    caller checks (`emulator.imagefetch`), and for an owned upload key in `uploaded`.

    Anything else is treated as an `s3://` upload key, which must start with `owner_prefix`
    (sha256 of the user ID plus "/") and name an upload made (`POST /v1/image/upload`).
    """
    if not url or is_valid_http_url(url):
        return None
    key = url.removeprefix("s3://")
    if not key.startswith(owner_prefix):
        return 401, "init_image_not_owned"
    if key in uploaded:
        return None
    return 400, "mask_image_not_found" if mask else "init_image_not_found"


# Go's unicode.IsSpace, which strings.Fields splits on (Python's str.split differs).
_GO_SPACE = re.compile(
    "[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def format_prompt(text: str) -> str:
    """`utils.FormatPrompt`: newlines to spaces, whitespace collapsed and trimmed; over 500
    runes it is cut to 500 bytes, which may split a character (shown then as U+FFFD)."""
    cleaned = " ".join(part for part in _GO_SPACE.split(text.replace("\n", " ")) if part)
    if len(cleaned) > MAX_PROMPT_LENGTH:
        cut = cleaned.encode("utf-8", errors="surrogatepass")[:MAX_PROMPT_LENGTH]
        cleaned = cut.decode("utf-8", errors="replace")
    return cleaned


def plan_from_request(
    request: CreateGenerationRequest, random_seed: Callable[[], int]
) -> GenerationPlan:
    """Default and validate a decoded request, then fix the steps the worker will run.

    Raises ServerPanic or RequestValidationError.
    """
    apply_defaults(request, random_seed)
    validate(request)
    assert request.model_id is not None and request.scheduler_id is not None
    assert request.width is not None and request.height is not None
    assert request.inference_steps is not None and request.guidance_scale is not None
    assert request.num_outputs is not None and request.seed is not None
    model = catalog.get_model(request.model_id)
    assert model is not None
    return GenerationPlan(
        prompt=format_prompt(request.prompt),
        negative_prompt=format_prompt(request.negative_prompt),
        model_id=request.model_id,
        scheduler_id=request.scheduler_id,
        width=request.width,
        height=request.height,
        num_outputs=request.num_outputs,
        guidance_scale=request.guidance_scale,
        # Since 2024-09-07 the worker always gets the model's default, whatever was asked.
        inference_steps=model.default_inference_steps,
        requested_inference_steps=request.inference_steps,
        seed=request.seed,
        init_image_url=request.init_image_url,
        mask_image_url=request.mask_image_url,
        prompt_strength=request.prompt_strength,
    )


def plan_generation(body: bytes, random_seed: Callable[[], int]) -> GenerationPlan:
    """Decode, default and validate a body as the API route does.

    Raises JsonParseError, ServerPanic or RequestValidationError.
    """
    return plan_from_request(parse_request(body), random_seed)
