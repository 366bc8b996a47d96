"""The JPEGs behind output URLs: real pictures, deterministic in the generation's parameters."""

from __future__ import annotations

import io

import httpx
from PIL import Image, ImageChops, ImageStat

from emulator.images import RenderParams, render_jpeg
from tests.emulator.emulator_support import Create

BODY = {"prompt": "a  quiet\nharbour", "width": 384, "height": 256, "seed": 42, "num_outputs": 2}


async def fetch(client: httpx.AsyncClient, url: str) -> httpx.Response:
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    return response


async def test_same_parameters_give_identical_bytes_under_new_ids(
    create: Create, client: httpx.AsyncClient
) -> None:
    first = (await create(BODY)).json()["outputs"]
    # The same prompt once normalised (whitespace), the same settings and seed.
    second = (await create({**BODY, "prompt": "a quiet harbour"})).json()["outputs"]
    assert {o["id"] for o in first}.isdisjoint(o["id"] for o in second)
    first_bytes = [(await fetch(client, o["url"])).content for o in first]
    second_bytes = [(await fetch(client, o["url"])).content for o in second]
    assert first_bytes == second_bytes
    assert first_bytes[0] != first_bytes[1]  # each output of a generation differs
    picture = Image.open(io.BytesIO(first_bytes[0]))
    assert picture.format == "JPEG"
    assert picture.size == (384, 256)


async def test_another_seed_gives_a_visibly_different_picture(
    create: Create, client: httpx.AsyncClient
) -> None:
    a = (await create(BODY)).json()["outputs"][0]["url"]
    b = (await create({**BODY, "seed": 43})).json()["outputs"][0]["url"]
    image_a = Image.open(io.BytesIO((await fetch(client, a)).content)).convert("RGB")
    image_b = Image.open(io.BytesIO((await fetch(client, b)).content)).convert("RGB")
    difference = ImageStat.Stat(ImageChops.difference(image_a, image_b)).mean
    assert sum(difference) / 3 > 10  # mean per-channel difference, out of 255


async def test_unknown_image_ids_are_404(client: httpx.AsyncClient) -> None:
    for path in (
        "/images/00000000-0000-4000-8000-000000000000.jpeg",
        "/images/not-a-uuid.jpeg",
        "/images/00000000-0000-4000-8000-000000000000.png",
    ):
        assert (await client.get(path)).status_code == 404


def test_renderer_is_deterministic_and_pictures_are_not_flat() -> None:
    params = RenderParams("a forest", "", "m", "s", 320, 240, 7.0, 30, 7, 0)
    data = render_jpeg(params)
    assert data == render_jpeg(params)
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    assert picture.size == (320, 240)
    spread = ImageStat.Stat(picture).stddev
    assert min(spread) > 10  # a scene, not a solid fill
