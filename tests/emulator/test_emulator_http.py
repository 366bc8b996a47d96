"""The emulated endpoints over real HTTP: auth, bodies, settings echo, credits, routing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid

import httpx
import pytest

from emulator import Emulator
from tests.emulator.emulator_support import (
    DDPM,
    FLUX,
    K_EULER,
    K_EULER_ANCESTRAL,
    KANDINSKY_22,
    OTHER_TOKEN,
    SDXL,
    SMALL,
    TOKEN,
    Create,
    auth,
    wait_until,
)
from tests.fixtures import CREATE

UUID_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        f"Token {TOKEN}",
        f"bearer {TOKEN}",
        "Bearer sc-" + "0" * 64,
        f"Bearer {TOKEN} Bearer {TOKEN}",
    ],
)
async def test_bad_or_unknown_credentials_get_401(
    client: httpx.AsyncClient, emu: Emulator, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await client.post(CREATE, json=SMALL, headers=headers)
    assert response.status_code == 401
    assert response.content == b'{"error":"Unauthorized"}\n'
    assert response.headers["Content-Type"] == "application/json"
    assert emu.balance(TOKEN) == 100


async def test_header_is_split_on_the_literal_bearer_like_the_real_server(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(CREATE, json=SMALL, headers={"Authorization": f"xBearer {TOKEN}"})
    assert response.status_code == 200


async def test_success_body_credits_and_records(create: Create, emu: Emulator) -> None:
    response = await create(
        {"prompt": "a <red> fox", "width": 512, "height": 768, "num_outputs": 3}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert "Server" not in response.headers
    body = response.json()
    assert list(body) == ["outputs", "remaining_credits", "settings"]
    assert body["remaining_credits"] == 97 and isinstance(body["remaining_credits"], int)
    assert emu.balance(TOKEN) == 97
    assert emu.generation_count == 1
    outputs = body["outputs"]
    assert len(outputs) == 3 and len({o["id"] for o in outputs}) == 3
    for output in outputs:
        assert list(output) == ["id", "url", "image_url"]
        assert UUID_V4.fullmatch(output["id"])
        assert (
            output["url"] == output["image_url"] == f"{emu.public_url}/images/{output['id']}.jpeg"
        )
    assert body["settings"] == {
        "model_id": FLUX,
        "scheduler_id": K_EULER,
        "width": 512,
        "height": 768,
        "num_outputs": 3,
        "guidance_scale": 7,
        "inference_steps": 4,
        "seed": body["settings"]["seed"],
    }
    (record,) = emu.requests
    assert record.status == 200 and record.error is None and record.fault is None
    assert record.json == {"prompt": "a <red> fox", "width": 512, "height": 768, "num_outputs": 3}
    assert record.token_sha256 == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert TOKEN not in json.dumps(record.to_dict())
    assert record.completed_at is not None and record.completed_at >= record.received_at
    assert not record.client_disconnected and not record.connection_dropped


async def test_settings_echo_overwrites_steps_and_fixes_the_scheduler(create: Create) -> None:
    response = await create(
        {
            "model_id": KANDINSKY_22,
            "scheduler_id": K_EULER,
            "inference_steps": 12,
            "guidance_scale": 7.1,
            "seed": 0,
            "num_outputs": 1,
            "width": 256,
            "height": 256,
        }
    )
    assert response.status_code == 200
    assert b'"guidance_scale":7.1,' in response.content  # float32 printed shortest
    settings = response.json()["settings"]
    assert settings["scheduler_id"] == DDPM
    assert settings["inference_steps"] == 30  # the model's default, not 12
    assert settings["seed"] == 0
    assert "prompt_strength" not in settings and "init_image_url" not in settings


async def test_absent_or_negative_seed_is_random(create: Create) -> None:
    seeds = []
    for body in ({**SMALL}, {**SMALL, "seed": -5}, {**SMALL}):
        response = await create(body)
        seed = response.json()["settings"]["seed"]
        assert 0 <= seed <= 2**31 - 2
        seeds.append(seed)
    assert len(set(seeds)) == 3


async def test_img2img_echoes_url_and_default_prompt_strength(
    create: Create, emu: Emulator
) -> None:
    emu.configure(image_url_hosts=["example.com"])  # accepted without a fetch
    url = "https://example.com/cat.png"
    response = await create({**SMALL, "model_id": SDXL, "init_image_url": url})
    assert response.status_code == 200
    settings = response.json()["settings"]
    assert settings["init_image_url"] == url
    assert settings["prompt_strength"] == 0.5
    assert settings["scheduler_id"] == K_EULER_ANCESTRAL
    clamped = await create({**SMALL, "init_image_url": url, "prompt_strength": 7})
    assert clamped.status_code == 200
    assert clamped.json()["settings"]["prompt_strength"] == 1


async def test_s3_init_images_are_checked_for_ownership(
    create: Create, client: httpx.AsyncClient, emu: Emulator
) -> None:
    response = await create({**SMALL, "init_image_url": "s3://someone-else/x.png"})
    assert response.status_code == 401
    assert response.json()["error"] == "init_image_not_owned"
    assert response.json()["settings"]["init_image_url"] == "s3://someone-else/x.png"
    account = (await client.get(f"/_emulator/accounts/{emu.add_account(TOKEN, 100)}")).json()
    owned = "s3://" + hashlib.sha256(account["user_id"].encode()).hexdigest() + "/x.png"
    response = await create({**SMALL, "init_image_url": owned})
    assert (response.status_code, response.json()["error"]) == (400, "init_image_not_found")
    assert emu.balance(TOKEN) == 100


async def test_validation_errors_have_no_settings_and_cost_nothing(
    create: Create, emu: Emulator
) -> None:
    response = await create({"width": 2000})
    assert response.status_code == 400
    assert response.content == b'{"error":"Width is too large, max is: 1536"}\n'
    parse = await create(b'{"width": "512"}')
    assert parse.content == b'{"error":"json_parse_error"}\n'
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 0
    assert [r.error for r in emu.requests] == [
        "Width is too large, max is: 1536",
        "json_parse_error",
    ]


async def test_content_type_is_not_checked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CREATE,
        content=json.dumps(SMALL),
        headers={**auth(), "Content-Type": "text/plain"},
    )
    assert response.status_code == 200


async def test_deprecated_alias_creates_too(client: httpx.AsyncClient, emu: Emulator) -> None:
    response = await client.post(
        "/v1/image/generate", json={**SMALL, "num_outputs": 2, "seed": 9}, headers=auth()
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["outputs", "remaining_credits", "settings"]
    assert body["remaining_credits"] == 98 and isinstance(body["remaining_credits"], int)
    assert len(body["outputs"]) == 2
    for output in body["outputs"]:
        assert list(output) == ["id", "url", "image_url"]
        assert UUID_V4.fullmatch(output["id"])
        assert (
            output["url"] == output["image_url"] == f"{emu.public_url}/images/{output['id']}.jpeg"
        )
        picture = await client.get(output["url"])
        assert picture.headers["Content-Type"] == "image/jpeg"
    assert body["settings"] == {
        "model_id": FLUX,
        "scheduler_id": K_EULER,
        "width": 256,
        "height": 256,
        "num_outputs": 2,
        "guidance_scale": 7,
        "inference_steps": 4,
        "seed": 9,
    }
    assert emu.balance(TOKEN) == 98 and emu.generation_count == 1


async def test_insufficient_credits(create: Create, emu: Emulator) -> None:
    emu.add_account(OTHER_TOKEN, 1)
    response = await create({**SMALL, "num_outputs": 2}, token=OTHER_TOKEN)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "insufficient_credits"
    assert body["settings"]["num_outputs"] == 2
    assert emu.balance(OTHER_TOKEN) == 1
    zero = await create({**SMALL, "num_outputs": 0})  # deducting 0 fails in sc-go
    assert zero.json()["error"] == "insufficient_credits"
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 0


async def test_unknown_model_without_size_drops_the_connection(
    create: Create, emu: Emulator
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await create({"model_id": str(uuid.uuid4())})
    (record,) = emu.requests
    assert record.connection_dropped and record.status is None
    assert emu.balance(TOKEN) == 100


async def test_nsfw_word_list(create: Create, emu: Emulator) -> None:
    response = await create({**SMALL, "prompt": "something NSFW here"})
    assert response.status_code == 400
    assert response.json()["error"] == "nsfw_prompt"
    assert response.json()["settings"]["width"] == 256
    emu.configure(nsfw_words=["dragon"])
    assert (await create({**SMALL, "prompt": "a nsfw dragon"})).json()["error"] == "nsfw_prompt"
    assert (await create({**SMALL, "prompt": "nsfw"})).status_code == 200
    assert emu.balance(TOKEN) == 99


async def test_accept_any_token(create: Create, emu: Emulator) -> None:
    fresh = "sc-" + "c3" * 32
    assert (await create(SMALL, token=fresh)).status_code == 401
    emu.configure(accept_any_token=True, initial_credits=7)
    assert (await create(SMALL, token=fresh)).json()["remaining_credits"] == 6
    assert (await create(SMALL, token="sc-NOT-HEX")).status_code == 401


async def test_worker_timeout_fails_with_timeout_and_refunds(create: Create, emu: Emulator) -> None:
    emu.configure(latency_seconds=1.0, worker_timeout_seconds=0.1)
    response = await create(SMALL)
    assert response.status_code == 500
    assert response.json()["error"] == "TIMEOUT"
    assert response.json()["settings"]["num_outputs"] == 1
    assert 0.1 <= response.elapsed.total_seconds() < 0.9
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 1


async def test_client_disconnect_is_recorded_and_still_charged(emu: Emulator) -> None:
    emu.set_latency(0.8)
    impatient_timeout = httpx.Timeout(5.0, read=0.1)
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=impatient_timeout) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(CREATE, json=SMALL, headers=auth())
    (record,) = emu.requests
    await wait_until(lambda: record.client_disconnected)
    assert record.completed_at is None  # noticed while the worker was still running
    assert emu.balance(TOKEN) == 99
    await wait_until(lambda: record.completed_at is not None)
    assert record.client_disconnected and record.status == 200
    assert emu.balance(TOKEN) == 99 and emu.generation_count == 1


async def test_wait_for_requests_returns_once_they_have_arrived(
    create: Create, emu: Emulator
) -> None:
    waiter = asyncio.ensure_future(emu.wait_for_requests(CREATE, 2))
    await create(SMALL)
    assert not waiter.done()  # one of two arrived
    await create({**SMALL, "prompt": "a second lighthouse"})
    await asyncio.wait_for(waiter, timeout=5)
    await emu.wait_for_requests(  # already there: returns at once
        CREATE, 1, where=lambda r: r.json is not None and r.json["prompt"] == "a second lighthouse"
    )
    # The bound is what is under test: nothing more arrives, so the wait times out.
    with pytest.raises(TimeoutError, match="2 of 3 requests to /v1/image/generation/create"):
        await emu.wait_for_requests(CREATE, 3, timeout=0.2)
    emu.reset()  # the count starts again
    with pytest.raises(TimeoutError, match="0 of 1 requests"):
        await emu.wait_for_requests(CREATE, 1, timeout=0.2)


async def test_models_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/image/generation/models")
    assert response.status_code == 200
    models = response.json()["models"]
    assert [m["name"] for m in models] == [
        "FLUX.1",
        "Stable Diffusion 3",
        "Kandinsky 2.2",
        "SSD-1B",
        "SDXL",
        "Luna Diffusion",
        "22h Diffusion",
        "Waifu Diffusion",
    ]
    flux = models[0]
    assert list(flux) == [
        "id",
        "name",
        "is_default",
        "available_schedulers",
        "default_width",
        "default_height",
    ]
    assert (flux["id"], flux["is_default"], flux["default_width"]) == (FLUX, True, 1024)
    assert [s["name"] for s in flux["available_schedulers"]] == [
        "K_EULER",
        "K_EULER_ANCESTRAL",
        "DPM++_2M",
        "K_LMS",
        "UNI_PC",
    ]
    assert [m["is_default"] for m in models].count(True) == 1
    alias = await client.get("/v1/image/models/generate")
    assert alias.json() == response.json()


async def test_defaults_endpoint(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/image/generation/defaults")
    assert response.content == (
        b'{"model_id":"0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b",'
        b'"scheduler_id":"af2679a4-dbbb-4950-8c06-c3bb15416ef6","width":1024,"height":1024,'
        b'"num_outputs":2,"guidance_scale":7,"inference_steps":30,"prompt_strength":0.5}\n'
    )
    alias = await client.get("/v1/image/defaults/generate")
    assert alias.status_code == 200
    assert alias.headers["Content-Type"] == "application/json"
    assert alias.content == response.content


async def test_credits_endpoint(client: httpx.AsyncClient, create: Create) -> None:
    assert (await client.get("/v1/credits")).status_code == 401
    await create({**SMALL, "num_outputs": 4})
    body = (await client.get("/v1/credits", headers=auth())).json()
    assert body["total_remaining_credits"] == 96
    (credit,) = body["credits"]
    assert credit["remaining_amount"] == 96
    assert credit["expires_at"] == "2100-01-01T00:00:00Z"
    assert set(credit["type"]) == {"id", "name", "amount", "description"}
    assert credit["type"]["amount"] == 100


async def test_health_404_and_405(client: httpx.AsyncClient, emu: Emulator) -> None:
    health = await client.get("/v1/health")
    assert health.content == b'{"status":"ok"}\n'
    missing = await client.get("/v1/image/generation/nope")
    assert missing.status_code == 404
    assert missing.content == b"404 page not found\n"
    assert missing.headers["Content-Type"] == "text/plain; charset=utf-8"
    wrong = await client.get(CREATE, headers=auth())
    assert (wrong.status_code, wrong.content) == (405, b"")
    head = await client.head("/v1/health")
    assert head.status_code == 405
    assert [r.status for r in emu.requests] == [200, 404, 405, 405]
    assert emu.requests[1].error == "404 page not found"
