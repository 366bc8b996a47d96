"""Requests on each side of every documented boundary, shared by unit and integration tests."""

from __future__ import annotations

from typing import Any

MODEL = "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b"
SCHEDULER = "6fb13b76-9900-4fa4-abf8-8f843e034a7f"
NAN = float("nan")
INF = float("inf")

# (fields beyond a valid prompt, the fields expected to be reported; [] = valid)
BOUNDARIES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, []),
    ({"width": 256}, []),
    ({"width": 248}, ["width"]),
    ({"width": 1024}, []),
    ({"width": 1032}, ["width"]),
    ({"width": 0}, ["width"]),
    ({"width": 513}, ["width"]),
    ({"width": 520}, []),
    ({"height": 256}, []),
    ({"height": 255}, ["height", "height"]),
    ({"height": 1024}, []),
    ({"height": 1025}, ["height", "height"]),
    ({"height": 777}, ["height"]),
    ({"num_outputs": 1}, []),
    ({"num_outputs": 0}, ["num_outputs"]),
    ({"num_outputs": 4}, []),
    ({"num_outputs": 5}, ["num_outputs"]),
    ({"num_outputs": -1}, ["num_outputs"]),
    ({"guidance_scale": 1.0}, []),
    ({"guidance_scale": 0.99}, ["guidance_scale"]),
    ({"guidance_scale": 20.0}, []),
    ({"guidance_scale": 20.01}, ["guidance_scale"]),
    ({"guidance_scale": NAN}, ["guidance_scale", "guidance_scale"]),
    ({"guidance_scale": INF}, ["guidance_scale", "guidance_scale"]),
    ({"inference_steps": 10}, []),
    ({"inference_steps": 9}, ["inference_steps"]),
    ({"inference_steps": 50}, []),
    ({"inference_steps": 51}, ["inference_steps"]),
    ({"prompt_strength": 0.0}, []),
    ({"prompt_strength": -0.01}, ["prompt_strength"]),
    ({"prompt_strength": 1.0}, []),
    ({"prompt_strength": 1.01}, ["prompt_strength"]),
    ({"prompt_strength": NAN}, ["prompt_strength", "prompt_strength"]),
    # width * height * steps <= 1024 * 1024 * 30, unset steps counting as 30
    ({"width": 1024, "height": 1024}, []),
    ({"width": 1024, "height": 1024, "inference_steps": 30}, []),
    ({"width": 1024, "height": 1024, "inference_steps": 31}, ["inference_steps"]),
    ({"width": 1024, "height": 984, "inference_steps": 31}, []),
    ({"width": 1024, "height": 768, "inference_steps": 40}, []),
    ({"width": 1024, "height": 768, "inference_steps": 41}, ["inference_steps"]),
    ({"width": 1024, "height": 1024, "inference_steps": 50}, ["inference_steps"]),
    ({"width": 768, "height": 768, "inference_steps": 50}, []),
    (
        {"width": 1024, "height": 1024, "inference_steps": 51},
        ["inference_steps", "inference_steps"],
    ),
    ({"width": 1024, "inference_steps": 50}, []),
    ({"model_id": MODEL, "scheduler_id": SCHEDULER}, []),
    ({"model_id": "flux"}, ["model_id"]),
    ({"scheduler_id": "6fb13b76-9900-4fa4-abf8"}, ["scheduler_id"]),
    ({"init_image_url": "https://example.com/a.png"}, []),
    ({"init_image_url": "http://example.com/a.png"}, []),
    ({"init_image_url": "s3://bucket/a.png"}, []),
    ({"init_image_url": "ftp://example.com/a.png"}, ["init_image_url"]),
    ({"init_image_url": "example.com/a.png"}, ["init_image_url", "init_image_url"]),
    ({"init_image_url": "https://"}, ["init_image_url"]),
    ({"seed": 0}, []),
    ({"seed": -1}, []),
    ({"negative_prompt": ""}, []),
    ({"prompt": ""}, ["prompt"]),
    ({"prompt": " \n\t "}, ["prompt"]),
    ({"prompt": "\u00a0\u3000\u2028"}, ["prompt"]),  # blank to Go's unicode.IsSpace too
    ({"prompt": "\x1c"}, []),  # not a space to Go
    (
        {"width": 1004, "num_outputs": 9, "guidance_scale": 0.0, "model_id": "x", "prompt": ""},
        ["guidance_scale", "model_id", "num_outputs", "prompt", "width"],
    ),
]
