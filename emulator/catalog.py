"""Stablecog's generation models and schedulers, as the emulator's fixed catalog
(docs/upstream-api.md#models, docs/upstream-api.md#schedulers).

IDs, names and scheduler compatibility come from Stablecog's own clients. The per-model
defaults (default scheduler, size, inference steps) and the global default scheduler are rows
of the production database that no public source shows; the values here are ASSUMPTIONS,
chosen from the best public hints (the Discord bot's native sizes, the 2023 docs samples,
the FLUX.1-schnell worker capping steps at 4) and marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

NIL_UUID = UUID(int=0)


@dataclass(frozen=True)
class Scheduler:
    """A row of sc-go's `schedulers` table; `name` is its `name_in_worker`."""

    id: UUID
    name: str


@dataclass(frozen=True)
class GenerationModel:
    """A row of sc-go's `generation_models` table with its compatible schedulers."""

    id: UUID
    name: str
    active: bool
    scheduler_ids: tuple[UUID, ...]
    default_scheduler_id: UUID
    default_width: int
    default_height: int
    default_inference_steps: int
    is_default: bool = False


K_EULER = Scheduler(UUID("6fb13b76-9900-4fa4-abf8-8f843e034a7f"), "K_EULER")
K_EULER_ANCESTRAL = Scheduler(UUID("af2679a4-dbbb-4950-8c06-c3bb15416ef6"), "K_EULER_ANCESTRAL")
DPM_2M = Scheduler(UUID("9d175114-9a26-4371-861c-729ba9ecb4da"), "DPM++_2M")
K_LMS = Scheduler(UUID("55027f8b-f046-4e71-bc51-53d5448661e0"), "K_LMS")
DDIM = Scheduler(UUID("82cf78dd-6afb-48cc-aca6-14224cca6950"), "DDIM")
P_SAMPLER = Scheduler(UUID("b7224e56-1440-43b9-ac86-66d66f9e8c91"), "P_SAMPLER")
DDPM = Scheduler(UUID("cc1b8dbf-0aec-4e52-8110-8082506fb7ba"), "DDPM")
UNI_PC = Scheduler(UUID("01e94c28-501d-4c6d-8f00-079f3230bf58"), "UNI_PC")

SCHEDULERS: tuple[Scheduler, ...] = (
    K_EULER,
    K_EULER_ANCESTRAL,
    DPM_2M,
    K_LMS,
    DDIM,
    P_SAMPLER,
    DDPM,
    UNI_PC,
)

_SD_FAMILY = (K_EULER.id, K_EULER_ANCESTRAL.id, DPM_2M.id, K_LMS.id, UNI_PC.id)
_KANDINSKY_22 = (DDPM.id, DPM_2M.id)
_KANDINSKY_21 = (P_SAMPLER.id, DDIM.id)


def _model(
    uuid: str,
    name: str,
    *,
    active: bool,
    size: int,
    steps: int = 30,
    schedulers: tuple[UUID, ...] = _SD_FAMILY,
    default_scheduler: Scheduler = K_EULER_ANCESTRAL,
    is_default: bool = False,
) -> GenerationModel:
    return GenerationModel(
        id=UUID(uuid),
        name=name,
        active=active,
        scheduler_ids=schedulers,
        default_scheduler_id=default_scheduler.id,
        default_width=size,
        default_height=size,
        default_inference_steps=steps,
        is_default=is_default,
    )


# In display order (the web app's model dropdown), active models first.
# ASSUMED values: sizes follow the Discord bot's 1:1 sizes (512 for Waifu and 22h, 768 for
# Luna, 1024 otherwise) and the 2023 docs for retired models; default_inference_steps is 4
# for FLUX.1-schnell (its worker's cap) and 30 (the API's old default) for the others; the
# default scheduler is K_EULER for the flow-matching models (FLUX.1, SD3), K_EULER_ANCESTRAL
# (the web default) for the other SD-family models, DDPM / P_SAMPLER for Kandinsky.
MODELS: tuple[GenerationModel, ...] = (
    _model(
        "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b",
        "FLUX.1",
        active=True,
        size=1024,
        steps=4,
        default_scheduler=K_EULER,
        is_default=True,
    ),
    _model(
        "986d447d-c38b-4218-a2c8-6e0b691f47ec",
        "Stable Diffusion 3",
        active=True,
        size=1024,
        default_scheduler=K_EULER,
    ),
    _model(
        "9fa49c00-109d-430f-9ddd-449f02e2c71a",
        "Kandinsky 2.2",
        active=True,
        size=1024,
        schedulers=_KANDINSKY_22,
        default_scheduler=DDPM,
    ),
    _model("4e54440f-ee17-4712-b4b6-0671b94d685d", "SSD-1B", active=True, size=1024),
    _model("8002bc51-7260-468f-8840-cf1e6dbe3f8a", "SDXL", active=True, size=1024),
    _model("b6c1372f-31a7-457c-907c-d292a6ffef97", "Luna Diffusion", active=True, size=768),
    _model("fc06f6ab-ed14-4186-a7c0-aaec288d4f38", "22h Diffusion", active=True, size=512),
    _model("f7f3d973-ac6f-4a7a-9db8-e89e4fba03a9", "Waifu Diffusion", active=True, size=512),
    _model("3fb1f6d9-c0d3-4ae4-adf4-77f8da78a6f7", "Waifu Diffusion XL", active=False, size=1024),
    _model("36d9d835-646f-4fc7-b9fe-98654464bf8e", "Arcane Diffusion", active=False, size=512),
    _model(
        "22b0857d-7edc-4d00-9cd9-45aa509db093",
        "Kandinsky",
        active=False,
        size=768,
        schedulers=_KANDINSKY_21,
        default_scheduler=P_SAMPLER,
    ),
    _model("048b4aa3-5586-47ed-900f-f4341c96bdb2", "Stable Diffusion v1.5", active=False, size=512),
    _model("48a7031d-43b6-4a23-9f8c-8020eb6862e4", "Ghibli Diffusion", active=False, size=512),
    _model("8acfe4c8-751d-4aa6-8c3c-844e3ef478e0", "Openjourney", active=False, size=512),
    _model("eaa438e1-dbf9-48fd-be71-206f0f257617", "Redshift Diffusion", active=False, size=512),
)

DEFAULT_MODEL_ID = UUID("0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b")
# ASSUMED: the `schedulers.is_default` row reported by /defaults; the web app's default.
GLOBAL_DEFAULT_SCHEDULER_ID = K_EULER_ANCESTRAL.id

_MODELS_BY_ID = {m.id: m for m in MODELS}
_SCHEDULERS_BY_ID = {s.id: s for s in SCHEDULERS}


def get_model(model_id: UUID) -> GenerationModel | None:
    """The model with this ID, active or not (sc-go's cache holds both)."""
    return _MODELS_BY_ID.get(model_id)


def get_scheduler(scheduler_id: UUID) -> Scheduler | None:
    """The scheduler with this ID."""
    return _SCHEDULERS_BY_ID.get(scheduler_id)


def default_model() -> GenerationModel:
    """The model used when a request names none."""
    return _MODELS_BY_ID[DEFAULT_MODEL_ID]


def default_scheduler_id_for(model_id: UUID) -> UUID:
    """The model's default scheduler; the nil UUID for an unknown model (no row found)."""
    model = _MODELS_BY_ID.get(model_id)
    return model.default_scheduler_id if model else NIL_UUID


def compatible_scheduler_ids(model_id: UUID) -> tuple[UUID, ...]:
    """Schedulers the model accepts; empty for an unknown model."""
    model = _MODELS_BY_ID.get(model_id)
    return model.scheduler_ids if model else ()


def is_valid_model_id(model_id: UUID) -> bool:
    """Known and active, as sc-go's `IsValidGenerationModelID`."""
    model = _MODELS_BY_ID.get(model_id)
    return model is not None and model.active


def active_models() -> tuple[GenerationModel, ...]:
    """Models listed by GET /v1/image/generation/models."""
    return tuple(m for m in MODELS if m.active)


@dataclass(frozen=True)
class UpscaleModel:
    """A row of sc-go's `upscale_models` table."""

    id: UUID
    name: str
    is_default: bool = False


# The docs sample's SwinIR and the web's default since 2024-08-29; its name is ASSUMED
# (AuraSR, which the worker switched to the same day).
UPSCALE_MODELS: tuple[UpscaleModel, ...] = (
    UpscaleModel(UUID("e94a23f3-d9a4-45e9-bb08-9c7e6bce7b72"), "AuraSR", is_default=True),
    UpscaleModel(UUID("14c9c5a4-33a8-4aed-a648-ee8510ae65b2"), "SwinIR"),
)
_UPSCALE_MODELS_BY_ID = {m.id: m for m in UPSCALE_MODELS}


def get_upscale_model(model_id: UUID) -> UpscaleModel | None:
    """The upscale model with this ID."""
    return _UPSCALE_MODELS_BY_ID.get(model_id)


def default_upscale_model() -> UpscaleModel:
    """The upscale model used when a request names none."""
    return next(m for m in UPSCALE_MODELS if m.is_default)
