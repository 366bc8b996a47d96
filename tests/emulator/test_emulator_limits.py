"""The per-IP rate limit and the per-account queue, over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx

from emulator import Emulator
from tests.emulator.emulator_support import (
    OTHER_TOKEN,
    SMALL,
    TOKEN,
    Create,
    auth,
    start_of_window,
    wait_until,
)
from tests.fixtures import CREATE


async def test_rate_limit_is_per_ip_plain_text_with_headers(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    emu.configure(rate_limit_per_second=3)
    await start_of_window()
    assert (await create(SMALL, token=None)).status_code == 401  # auth first, not counted
    first = await create(SMALL)
    assert first.headers["X-RateLimit-Limit"] == "3"
    assert first.headers["X-RateLimit-Remaining"] == "2"
    await client.get("/v1/credits", headers=auth())  # the credits route shares the counter
    await create(SMALL)
    refused = await create(SMALL)
    assert refused.status_code == 429
    assert refused.content == b"Too Many Requests\n"
    assert refused.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert emu.balance(TOKEN) == 98
    other_ip = await client.post(
        CREATE, json=SMALL, headers={**auth(), "X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
    )
    assert other_ip.status_code == 200
    assert emu.requests[-1].client_ip == "203.0.113.9"


async def test_queue_blocks_then_refuses_past_the_overflow(
    client: httpx.AsyncClient, emu: Emulator
) -> None:
    emu.configure(queue_limit=1, queue_overflow_max=0, latency_seconds=0.5)
    emu.add_account(OTHER_TOKEN, 10)

    async def post(token: str = TOKEN) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = await client.post(CREATE, json=SMALL, headers=auth(token))
        return response, time.monotonic() - started

    # Like sc-go's `nq > qMax`, limit 1 lets two run; the third waits.
    running = [asyncio.create_task(post()) for _ in range(2)]
    await wait_until(lambda: emu.in_flight(TOKEN) == 2)
    waiting = asyncio.create_task(post())
    await wait_until(lambda: emu.waiting(TOKEN) == 1)
    refused, _ = await post()
    assert refused.status_code == 400
    assert refused.json()["error"] == "queue_limit_reached"
    assert refused.json()["settings"]["num_outputs"] == 1
    assert not any(task.done() for task in running)  # refused at once, without waiting
    other, _ = await post(OTHER_TOKEN)  # another account is not held up
    assert other.status_code == 200
    for task in running:
        assert (await task)[0].status_code == 200
    waited, elapsed = await waiting
    assert waited.status_code == 200
    assert elapsed >= 0.8  # waiting for a turn, then 0.5 s of work
    assert emu.balance(TOKEN) == 97
    assert emu.generation_count == 4
    assert (emu.in_flight(TOKEN), emu.waiting(TOKEN)) == (0, 0)


async def test_models_and_defaults_share_the_counter_at_twice_the_create_limit(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    emu.configure(rate_limit_per_second=2)  # create: 2 per second; the others: 4
    await start_of_window()
    models = await client.get("/v1/image/generation/models")  # no auth needed
    assert models.status_code == 200 and models.json()["models"]
    assert models.headers["X-RateLimit-Limit"] == "4"
    assert models.headers["X-RateLimit-Remaining"] == "3"
    assert int(models.headers["X-RateLimit-Reset"]) >= int(time.time())
    defaults = await client.get("/v1/image/defaults/generate")
    assert (defaults.status_code, defaults.headers["X-RateLimit-Remaining"]) == (200, "2")
    refused = await create(SMALL)  # two on the shared counter already: create's limit is hit
    assert refused.status_code == 429
    assert refused.content == b"Too Many Requests\n"
    assert (refused.headers["X-RateLimit-Limit"], refused.headers["X-RateLimit-Remaining"]) == (
        "2",
        "0",
    )
    credits = await client.get("/v1/credits", headers=auth())  # limit 4, like models
    assert (credits.status_code, credits.headers["X-RateLimit-Remaining"]) == (200, "1")
    last = await client.get("/v1/image/generation/defaults")
    assert (last.status_code, last.headers["X-RateLimit-Remaining"]) == (200, "0")
    for path in ("/v1/image/models/generate", "/v1/image/generation/defaults"):
        limited = await client.get(path)
        assert limited.status_code == 429
        assert limited.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert limited.headers["Retry-After"] == "1"
        assert limited.headers["X-RateLimit-Limit"] == "4"
    over = await create(SMALL)  # the shared count (4) is past create's own limit (2)
    assert over.headers["X-RateLimit-Remaining"] == "-2"  # as httprate prints it
    other_ip = await client.get("/v1/image/generation/models", headers={"X-Real-Ip": "192.0.2.7"})
    assert other_ip.status_code == 200
    assert emu.balance(TOKEN) == 100
    assert (await client.get("/v1/health")).status_code == 200  # never limited


async def test_models_and_defaults_are_unlimited_when_limiting_is_off(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/v1/image/generation/models", "/v1/image/defaults/generate") * 30:
        response = await client.get(path)
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers


async def test_client_ip_priority_cf_then_x_real_ip_then_forwarded(
    create: Create, client: httpx.AsyncClient, emu: Emulator
) -> None:
    emu.configure(rate_limit_per_second=1)  # one create per IP: a 429 shows the key reused
    await start_of_window()

    async def post(**headers: str) -> int:
        response = await client.post(CREATE, json=SMALL, headers={**auth(), **headers})
        return response.status_code

    cf, real, forwarded = "198.51.100.1", "198.51.100.2", "198.51.100.3"
    everything = {"CF-Connecting-IP": cf, "X-Real-Ip": real, "X-Forwarded-For": forwarded}
    assert await post(**everything) == 200  # counted for cf
    assert await post(**{"X-Real-Ip": cf, "X-Forwarded-For": forwarded}) == 429
    assert await post(**{"X-Real-Ip": real, "X-Forwarded-For": cf}) == 200  # counted for real
    assert await post(**{"CF-Connecting-IP": "198.51.100.4", "X-Real-Ip": real}) == 200
    assert await post(**{"X-Forwarded-For": f"{forwarded}, {cf}"}) == 200  # the first entry
    assert [r.client_ip for r in emu.requests] == [cf, cf, real, "198.51.100.4", forwarded]


async def test_rate_limit_headers_on_400_answers(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    emu.configure(rate_limit_per_second=9)
    emu.add_account(OTHER_TOKEN, 0)
    await start_of_window()
    answers = [
        await create(b"{not json"),
        await create({"width": 99}),
        await create({**SMALL, "init_image_url": "https://example.com/a.png"}),
        await create(SMALL, token=OTHER_TOKEN),
    ]
    assert [r.json()["error"] for r in answers] == [
        "json_parse_error",
        "Width is too small, min is: 256",
        "image_url_width_height_error",
        "insufficient_credits",
    ]
    for index, response in enumerate(answers):
        assert response.status_code == 400
        assert response.headers["X-RateLimit-Limit"] == "9"
        assert response.headers["X-RateLimit-Remaining"] == str(8 - index)
        assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
