"""The per-IP rate limit and the per-account queue, over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx

from emulator import Emulator
from tests.emulator.emulator_support import (
    CREATE,
    OTHER_TOKEN,
    SMALL,
    TOKEN,
    Create,
    auth,
    wait_until,
)


async def test_rate_limit_is_per_ip_plain_text_with_headers(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    emu.configure(rate_limit_per_second=3)
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
