"""Pure cache keys for seeded generations.

A generation with an explicit seed >= 0 is deterministic: the same seed and settings
give the same image. The key is a digest of a canonical form of everything that
decides the image, normalised the way the upstream normalises it, with the
upstream's static defaults filled in (so an omitted field and its explicit default
share a key), scoped to the account (a keyed digest of the API key, never the key)
and to the upstream URL. Defaults that live in the upstream's database (the default
model, and the model's default scheduler and size) are not static: they are filled in
from the model catalog when it is known (`CatalogDefaults`), so omitting `model_id`
and naming the default model share an entry, and so do an omitted size and the model's
default one. Without a catalog, and always for the scheduler (the catalog does not say
which scheduler is a model's default), an omitted value stays "default" in the key.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.upstream_defaults import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INFERENCE_STEPS,
    DEFAULT_NUM_OUTPUTS,
    DEFAULT_PROMPT_STRENGTH,
    MAX_PROMPT_RUNES,
)

KEY_PREFIX = "scgw:v1:"
# Go's unicode.IsSpace: what strings.Fields splits on.
GO_SPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")


@dataclass(frozen=True)
class CatalogDefaults:
    """The upstream's database defaults, as the model catalog reports them."""

    default_model_id: str
    # Lower-cased model id -> (default width, default height).
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, catalog: generation_pb2.ListModelsResponse) -> CatalogDefaults | None:
        """From a catalog snapshot; None when it names no default model."""
        default = next((m.id for m in catalog.models if m.is_default), catalog.defaults.model_id)
        if not default:
            return None
        sizes = {
            m.id.lower(): (m.default_width, m.default_height)
            for m in catalog.models
            if m.default_width > 0 and m.default_height > 0
        }
        return cls(default.lower(), sizes)


def is_cacheable(request: generation_pb2.GenerationRequest) -> bool:
    """Only an explicit seed >= 0 is deterministic; the upstream draws the others at random."""
    return request.HasField("seed") and request.seed >= 0


def format_prompt(text: str) -> bytes:
    """The upstream's FormatPrompt: newlines to spaces, whitespace collapsed, trimmed, and a
    text over 500 runes cut to its first 500 bytes (which may split a character).

    "Whitespace" is Go's unicode.IsSpace (strings.Fields), not Python's str.split(),
    which also splits on the separators U+001C..U+001F: two prompts the upstream keeps
    apart must never share a cache entry."""
    collapsed = " ".join(part for part in GO_SPACE.split(text) if part)
    encoded = collapsed.encode("utf-8")
    if len(collapsed) > MAX_PROMPT_RUNES:
        return encoded[:MAX_PROMPT_RUNES]
    return encoded


def _float32(value: float) -> str:
    """A float32 value as its exact bit pattern, so 7 and 7.0 and 7.0000001 compare right."""
    return struct.pack(">f", value).hex()


def canonical_form(
    request: generation_pb2.GenerationRequest, defaults: CatalogDefaults | None = None
) -> dict[str, Any]:
    """Everything that decides the image, normalised, defaults filled in (the catalog's
    too, when `defaults` is given)."""
    init_image_url = request.init_image_url if request.HasField("init_image_url") else ""
    prompt_strength: str | None = None
    if init_image_url:
        strength = request.prompt_strength if request.HasField("prompt_strength") else None
        strength = DEFAULT_PROMPT_STRENGTH if strength is None else min(max(strength, 0.0), 1.0)
        prompt_strength = _float32(strength)
    model_id = request.model_id.lower() if request.HasField("model_id") else "default"
    width: int | str = request.width if request.HasField("width") else "default"
    height: int | str = request.height if request.HasField("height") else "default"
    if defaults is not None:
        model_id = defaults.default_model_id if model_id == "default" else model_id
        size = defaults.sizes.get(model_id)
        if size is not None:
            width = size[0] if width == "default" else width
            height = size[1] if height == "default" else height
    return {
        "prompt": format_prompt(request.prompt).hex(),
        "negative_prompt": format_prompt(request.negative_prompt).hex()
        if request.HasField("negative_prompt")
        else "",
        "model_id": model_id,
        "scheduler_id": request.scheduler_id.lower()
        if request.HasField("scheduler_id")
        else "default",
        "width": width,
        "height": height,
        "inference_steps": request.inference_steps
        if request.HasField("inference_steps")
        else DEFAULT_INFERENCE_STEPS,
        "guidance_scale": _float32(
            request.guidance_scale if request.HasField("guidance_scale") else DEFAULT_GUIDANCE_SCALE
        ),
        "num_outputs": request.num_outputs
        if request.HasField("num_outputs")
        else DEFAULT_NUM_OUTPUTS,
        "seed": request.seed,
        "init_image_url": init_image_url,
        "prompt_strength": prompt_strength,
    }


def cache_key(
    request: generation_pb2.GenerationRequest,
    scope: str,
    defaults: CatalogDefaults | None = None,
) -> str:
    """The store key for a cacheable request within an account scope."""
    canonical = json.dumps(
        {"scope": scope, "request": canonical_form(request, defaults)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return KEY_PREFIX + "gen:" + hashlib.sha256(canonical.encode()).hexdigest()
