"""A polyglot caller: the Node example (@grpc/grpc-js) against a real gateway."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from gateway.app import GatewayApp

ROOT = Path(__file__).resolve().parents[2]


def _node() -> str:
    node = shutil.which("node")
    if node and (ROOT / "examples" / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return node
    message = "node or examples/node_modules is missing (make test runs `npm ci --prefix examples`)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


async def _run(gateway: GatewayApp, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        _node(),
        str(ROOT / "examples" / "generate.mjs"),
        *args,
        env={**os.environ, "GATEWAY_TARGET": f"127.0.0.1:{gateway.grpc_port}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode()


async def test_node_client_generates(gateway: GatewayApp) -> None:
    code, out = await _run(gateway, "a lighthouse at dawn", "--seed", "42")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert len(lines) == 3  # two outputs (the default num_outputs) and a summary
    assert all(line.startswith("http://127.0.0.1:") for line in lines[:2])
    assert re.fullmatch(r"seed 42, \d+x\d+, remaining credits \d+, cache miss", lines[2])


async def test_node_client_reads_field_violations(gateway: GatewayApp) -> None:
    code, out = await _run(gateway, "   ")
    assert code == 1
    assert out.splitlines()[0].startswith("INVALID_ARGUMENT: invalid request")
    assert "  prompt: prompt must not be blank" in out
