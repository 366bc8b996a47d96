"""The upload and upscale endpoints over real HTTP: shapes, errors, credits, and an upload's
`s3://` key accepted by a generation as its init image."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from emulator import Emulator
from emulator.uploads import MAX_UPLOAD_BYTES, sniff_extension
from tests.emulator.emulator_support import OTHER_TOKEN, SMALL, TOKEN, Create, auth

UPLOAD = "/v1/image/upload"
UPSCALE = "/v1/image/upscale/create"
AURA_SR = "e94a23f3-d9a4-45e9-bb08-9c7e6bce7b72"


def picture(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


def test_sniffing_recognises_the_three_types_by_their_bytes() -> None:
    assert [sniff_extension(picture(f)) for f in ("JPEG", "PNG", "WEBP", "GIF")] == [
        "jpeg",
        "png",
        "webp",
        None,
    ]
    assert sniff_extension(b"RIFF\0\0\0\0WAVEfmt ") is None


async def upload(client: httpx.AsyncClient, data: bytes, token: str = TOKEN) -> httpx.Response:
    return await client.post(UPLOAD, files={"file": ("x.bin", data)}, headers=auth(token))


async def test_an_upload_is_an_owned_s3_key_a_generation_accepts(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    answer = await upload(client, picture("PNG"))
    assert answer.status_code == 200, answer.text
    url = answer.json()["object"]
    assert url.startswith("s3://") and url.endswith(".png")
    assert emu.balance(TOKEN) == 100  # free
    generated = await create({**SMALL, "init_image_url": url})
    assert generated.status_code == 200, generated.text
    assert generated.json()["settings"]["init_image_url"] == url
    emu.add_account(OTHER_TOKEN, 10)
    stolen = await create({**SMALL, "init_image_url": url}, token=OTHER_TOKEN)
    assert (stolen.status_code, stolen.json()["error"]) == (401, "init_image_not_owned")
    never_uploaded = url.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000.png"
    missing = await create({**SMALL, "init_image_url": never_uploaded})
    assert (missing.status_code, missing.json()["error"]) == (400, "init_image_not_found")


async def test_upload_errors(client: httpx.AsyncClient, emu: Emulator) -> None:
    gif = await upload(client, picture("GIF"))
    assert (gif.status_code, gif.json()) == (400, {"error": "invalid_content_type"})
    big = await upload(client, picture("PNG") + b"\0" * MAX_UPLOAD_BYTES)
    assert (big.status_code, big.json()) == (400, {"error": "invalid_file"})
    other_field = await client.post(UPLOAD, files={"image": ("x", b"x")}, headers=auth())
    assert other_field.json() == {"error": "invalid_file"}
    not_multipart = await client.post(UPLOAD, json={"file": "x"}, headers=auth())
    assert not_multipart.json() == {"error": "parse_error"}
    nobody = await client.post(UPLOAD, files={"file": ("x", picture("PNG"))})
    assert nobody.status_code == 401
    emu.add_account(OTHER_TOKEN, 0)
    broke = await upload(client, picture("PNG"), token=OTHER_TOKEN)
    assert (broke.status_code, broke.json()) == (400, {"error": "insufficient_credits"})
    big_record = emu.requests[-5]  # its megabytes were not recorded, only their count
    assert big_record.body == f"<{int(big.request.headers['content-length'])} bytes>"


async def test_upscale_an_output_costs_one_credit(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    output = (await create(SMALL)).json()["outputs"][0]
    answer = await client.post(UPSCALE, json={"input": output["id"]}, headers=auth())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["settings"] == {"model_id": AURA_SR, "input": output["id"]}
    (upscaled,) = body["outputs"]
    assert (upscaled["id"], upscaled["url"], upscaled["image_url"]) == (
        output["id"],
        output["url"],
        output["url"],
    )
    assert body["remaining_credits"] == emu.balance(TOKEN) == 100 - 1 - 1
    picture_answer = await client.get(upscaled["upscaled_image_url"])
    assert picture_answer.status_code == 200
    assert Image.open(io.BytesIO(picture_answer.content)).size == (512, 512)


async def test_upscale_refusals_cost_nothing(client: httpx.AsyncClient, emu: Emulator) -> None:
    async def refused(body: object) -> str:
        answer = await client.post(UPSCALE, json=body, headers=auth())
        assert answer.status_code == 400, answer.text
        return str(answer.json()["error"])

    unknown_output = "00000000-0000-4000-8000-000000000000"
    assert await refused({"input": unknown_output}) == "output_not_found"
    assert await refused({"input": "ftp://x/y.png"}) == "invalid_input"
    assert await refused({"input": "https://example.com/a.png"}) == "image_url_width_height_error"
    assert await refused({"input": "x", "model_id": "nope"}) == "json_parse_error"
    emu.faults.inject("worker_failure")
    url = f"{emu.base_url}/images/{unknown_output}.jpeg"
    assert await refused({"input": url}) == "image_url_width_height_error"  # fault used up
    assert emu.balance(TOKEN) == 100


async def test_upscale_worker_failure_is_refunded(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    output = (await create(SMALL)).json()["outputs"][0]
    emu.faults.inject("worker_failure")
    failed = await client.post(UPSCALE, json={"input": output["id"]}, headers=auth())
    assert failed.status_code == 500
    assert failed.json()["error"] == "runpod_failed"
    assert failed.json()["settings"]["input"] == output["id"]
    assert emu.balance(TOKEN) == 99
