"""Fixtures for the emulator's tests: a real emulator on 127.0.0.1 and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from emulator import Emulator, EmulatorConfig
from tests.emulator.emulator_support import TOKEN, Create, auth
from tests.fixtures import CREATE


@pytest.fixture
def config() -> EmulatorConfig:
    """Fast settings; tests override with `emu.configure(...)`."""
    return EmulatorConfig(latency_seconds=0.0, rate_limit_per_second=0)


@pytest.fixture
async def emu(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    """A started emulator with one account of 100 credits under TOKEN."""
    emulator = Emulator(config)
    await emulator.start(host="127.0.0.1", port=0)
    emulator.add_account(TOKEN, 100)
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client aimed at the emulator."""
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=5.0) as http:
        yield http


@pytest.fixture
def create(client: httpx.AsyncClient) -> Create:
    """`await create(body, token=TOKEN)`: POST a create request (dict as JSON, bytes raw)."""

    async def post(body: dict[str, Any] | bytes, token: str | None = TOKEN) -> httpx.Response:
        headers = auth(token) if token is not None else {}
        if isinstance(body, bytes):
            return await client.post(CREATE, content=body, headers=headers)
        return await client.post(CREATE, json=body, headers=headers)

    return post
