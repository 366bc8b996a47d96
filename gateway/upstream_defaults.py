"""The upstream's static defaults and limits (docs/upstream-api.md#defaults). Pure constants.

Defaults that live in the upstream's database (the default model, and a model's
default scheduler and size) are not here: they are not static.
"""

from __future__ import annotations

CREATE_PATH = "/v1/image/generation/create"
# The metrics label for that endpoint.
CREATE_ENDPOINT = "generation_create"
# The free reads (docs/upstream-api.md#other-endpoints) and their metrics labels.
MODELS_PATH = "/v1/image/generation/models"
MODELS_ENDPOINT = "generation_models"
DEFAULTS_PATH = "/v1/image/generation/defaults"
DEFAULTS_ENDPOINT = "generation_defaults"
CREDITS_PATH = "/v1/credits"
CREDITS_ENDPOINT = "credits"
# The image routes beyond generation (docs/upstream-api.md#upload-endpoint,
# docs/upstream-api.md#upscale-endpoint) and their metrics labels.
UPLOAD_PATH = "/v1/image/upload"
UPLOAD_ENDPOINT = "image_upload"
UPSCALE_PATH = "/v1/image/upscale/create"
UPSCALE_ENDPOINT = "upscale_create"
UPSCALE_CREDITS = 1

DEFAULT_GUIDANCE_SCALE = 7.0
DEFAULT_NUM_OUTPUTS = 2
DEFAULT_INFERENCE_STEPS = 30
# width * height * inference_steps may be at most this.
MAX_PIXEL_STEPS = 1024 * 1024 * 30
DEFAULT_PROMPT_STRENGTH = 0.5
# The upstream keeps the first 500 bytes of a prompt longer than 500 runes.
MAX_PROMPT_RUNES = 500

# Generation model ids the upstream is known to have had (docs/upstream-api.md#models).
# The live catalog is the upstream's; these only let metrics initialise their series.
KNOWN_MODEL_IDS = (
    "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b",  # FLUX.1
    "986d447d-c38b-4218-a2c8-6e0b691f47ec",  # Stable Diffusion 3
    "9fa49c00-109d-430f-9ddd-449f02e2c71a",  # Kandinsky 2.2
    "4e54440f-ee17-4712-b4b6-0671b94d685d",  # SSD-1B
    "8002bc51-7260-468f-8840-cf1e6dbe3f8a",  # SDXL
    "b6c1372f-31a7-457c-907c-d292a6ffef97",  # Luna Diffusion
    "fc06f6ab-ed14-4186-a7c0-aaec288d4f38",  # 22h Diffusion
    "f7f3d973-ac6f-4a7a-9db8-e89e4fba03a9",  # Waifu Diffusion
    "3fb1f6d9-c0d3-4ae4-adf4-77f8da78a6f7",  # Waifu Diffusion XL
    "36d9d835-646f-4fc7-b9fe-98654464bf8e",  # Arcane Diffusion
    "22b0857d-7edc-4d00-9cd9-45aa509db093",  # Kandinsky 2.1
    "048b4aa3-5586-47ed-900f-f4341c96bdb2",  # Stable Diffusion v1.5
    "48a7031d-43b6-4a23-9f8c-8020eb6862e4",  # Ghibli Diffusion
    "8acfe4c8-751d-4aa6-8c3c-844e3ef478e0",  # Openjourney
    "eaa438e1-dbf9-48fd-be71-206f0f257617",  # Redshift Diffusion
)
