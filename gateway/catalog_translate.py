"""Pure translation of the free reads' JSON (models, defaults, credits) into the contract's
messages (docs/upstream-api.md#other-endpoints). No I/O.

An answer that is not the documented shape raises UpstreamReadFailed: a free read costs
nothing, so the caller may simply retry.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.errors import UpstreamReadFailed


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UpstreamReadFailed(f"Stablecog's {what} answer is not a JSON object; retry later")
    return data


def _bad(what: str) -> UpstreamReadFailed:
    return UpstreamReadFailed(f"Stablecog's {what} answer is not the documented shape")


def models_from_json(models_body: bytes, defaults_body: bytes) -> generation_pb2.ListModelsResponse:
    """The catalog from `GET /v1/image/generation/models` and `.../defaults`."""
    models = _object(models_body, "models").get("models")
    defaults = _object(defaults_body, "defaults")
    if not isinstance(models, list):
        raise _bad("models")
    response = generation_pb2.ListModelsResponse()
    try:
        for item in models:
            model = response.models.add(
                id=str(item["id"]),
                name=str(item.get("name", "")),
                is_default=bool(item.get("is_default", False)),
                default_width=int(item.get("default_width") or 0),
                default_height=int(item.get("default_height") or 0),
            )
            for scheduler in item.get("available_schedulers") or ():
                model.schedulers.add(id=str(scheduler["id"]), name=str(scheduler.get("name", "")))
        response.defaults.CopyFrom(
            generation_pb2.GenerationDefaults(
                model_id=str(defaults.get("model_id") or ""),
                scheduler_id=str(defaults.get("scheduler_id") or ""),
                width=int(defaults.get("width") or 0),
                height=int(defaults.get("height") or 0),
                num_outputs=int(defaults.get("num_outputs") or 0),
                guidance_scale=float(defaults.get("guidance_scale") or 0.0),
                inference_steps=int(defaults.get("inference_steps") or 0),
                prompt_strength=float(defaults.get("prompt_strength") or 0.0),
            )
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise _bad("models") from None
    return response


def credits_from_json(body: bytes) -> generation_pb2.GetCreditsResponse:
    """The balance from `GET /v1/credits`."""
    data = _object(body, "credits")
    response = generation_pb2.GetCreditsResponse()
    try:
        response.total_remaining_credits = float(data["total_remaining_credits"])
        for item in data.get("credits") or ():
            grant = response.credits.add(
                id=str(item.get("id", "")), remaining_amount=float(item["remaining_amount"])
            )
            if item.get("expires_at"):
                grant.expires_at.FromDatetime(
                    datetime.fromisoformat(str(item["expires_at"]).replace("Z", "+00:00"))
                )
            kind = item.get("type") or {}
            grant.type.CopyFrom(
                generation_pb2.CreditType(
                    id=str(kind.get("id", "")),
                    name=str(kind.get("name", "")),
                    amount=float(kind.get("amount") or 0.0),
                    description=str(kind.get("description", "")),
                )
            )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise _bad("credits") from None
    return response
