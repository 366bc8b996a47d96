"""Fixtures of the process-level tests: gateway child processes and a held port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from emulator.server import Emulator
from tests.conftest import ACCOUNT_KEY
from tests.processes import GatewayProcess


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture
async def spawn(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Callable[..., GatewayProcess]]:
    """Gateway processes against the emulator with the test account's key; killed by
    process id at teardown."""
    started: list[GatewayProcess] = []

    def factory(**env: str) -> GatewayProcess:
        process = GatewayProcess(
            {"STABLECOG_API_URL": emulator.base_url, "STABLECOG_API_KEY": ACCOUNT_KEY, **env},
            tmp_path / f"gateway-{len(started)}.log",
        )
        started.append(process)
        return process

    try:
        yield factory
    finally:
        for process in started:
            process.kill()
