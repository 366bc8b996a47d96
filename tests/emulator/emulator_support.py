"""Constants and helpers shared by the emulator's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

TOKEN = "sc-" + "a1" * 32
OTHER_TOKEN = "sc-" + "b2" * 32
FLUX = "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b"
SDXL = "8002bc51-7260-468f-8840-cf1e6dbe3f8a"
KANDINSKY_22 = "9fa49c00-109d-430f-9ddd-449f02e2c71a"
KANDINSKY_21 = "22b0857d-7edc-4d00-9cd9-45aa509db093"  # inactive
K_EULER = "6fb13b76-9900-4fa4-abf8-8f843e034a7f"
K_EULER_ANCESTRAL = "af2679a4-dbbb-4950-8c06-c3bb15416ef6"
DDPM = "cc1b8dbf-0aec-4e52-8110-8082506fb7ba"
Create = Callable[..., Awaitable[httpx.Response]]
SMALL = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_outputs": 1}


def auth(token: str = TOKEN) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def start_of_window(budget: float = 0.4) -> None:
    """Make sure at least `budget` seconds are left in the current 1 s rate-limit window
    (sleeping into the next one if needed), so a quick test's requests all fall in one
    window: a window rolling over mid-test would weigh the counts."""
    left = 1.0 - time.time() % 1.0
    if left < budget:  # waiting for the clock is the point: the limiter's windows follow it
        await asyncio.sleep(left + 0.01)
