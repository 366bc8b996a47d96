"""Plain helpers the gateway's tests share: one copy each (pytest fixtures live in conftest)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx

from emulator.records import RecordedRequest
from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.app import GatewayApp
from gateway.transport import AiohttpTransport

Stub = generation_pb2_grpc.GenerationServiceStub

# The emulator's (and Stablecog's) generation endpoint.
CREATE = "/v1/image/generation/create"

PROMPT = "a lighthouse at dawn"


def request(**fields: Any) -> generation_pb2.GenerationRequest:
    """A GenerationRequest of `fields`; the prompt is PROMPT unless given."""
    fields.setdefault("prompt", PROMPT)
    return generation_pb2.GenerationRequest(**fields)


def request_with(**defaults: Any) -> Callable[..., generation_pb2.GenerationRequest]:
    """`request` with other defaults, for a module whose calls share them, e.g.
    `request = request_with(num_outputs=2)`; a call's own fields win over the defaults."""

    def make(**fields: Any) -> generation_pb2.GenerationRequest:
        return request(**{**defaults, **fields})

    return make


def upstream_requests(emulator: Emulator) -> list[RecordedRequest]:
    """The generation requests the emulator received, oldest first."""
    return [r for r in emulator.requests if r.path == CREATE]


def upstream_calls(emulator: Emulator) -> int:
    """How many generation requests reached the emulator."""
    return len(upstream_requests(emulator))


async def call(
    target: GatewayApp | Stub, req: generation_pb2.GenerationRequest, **kw: Any
) -> tuple[generation_pb2.GenerationResponse, str]:
    """One CreateGeneration call; the response and its `x-cache` trailer. `target` is a
    stub, or a gateway (called over a channel of its own); `kw` goes to the call (metadata,
    timeout, ...)."""
    if isinstance(target, GatewayApp):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
            return await call(Stub(channel), req, **kw)
    rpc = target.CreateGeneration(req, **kw)
    response = await rpc
    trailing = dict(await rpc.trailing_metadata())
    return response, str(trailing["x-cache"])


async def call_trailers(
    target: GatewayApp | Stub, req: generation_pb2.GenerationRequest, **kw: Any
) -> tuple[generation_pb2.GenerationResponse, dict[str, str]]:
    """`call`, with every trailing metadata value of the answer."""
    if isinstance(target, GatewayApp):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
            return await call_trailers(Stub(channel), req, **kw)
    rpc = target.CreateGeneration(req, **kw)
    response = await rpc
    return response, {k: str(v) for k, v in await rpc.trailing_metadata()}


async def eventually(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until `condition()` is true, polling briefly; AssertionError after `timeout`
    seconds. For conditions the test cannot await directly (another process's state)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


def all_subclasses(cls: type) -> set[type]:
    """Every subclass of `cls`, however deep (for tables that must cover a hierarchy)."""
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


def make_pki(directory: Path, clients: dict[str, str]) -> Path:
    """A throwaway CA (`ca.crt`), a server certificate for 127.0.0.1/localhost
    (`server.crt`/`.key`) and one client certificate per entry of `clients` (file stem ->
    its `subjectAltName` value, e.g. "URI:spiffe://test/search"; CN is the stem), by openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ca = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca"]
    openssl(*ca, "-keyout", "ca.key", "-out", "ca.crt")
    certificates = {"server": "IP:127.0.0.1,DNS:localhost", **clients}
    for name, san in certificates.items():
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        key = ["-keyout", f"{name}.key", "-out", f"{name}.csr"]
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", *key)
        sign = ["-CAcreateserial", "-days", "1", "-CA", "ca.crt", "-CAkey", "ca.key"]
        extfile = ["-extfile", f"{name}.ext", "-out", f"{name}.crt"]
        openssl("x509", "-req", *sign, "-in", f"{name}.csr", *extfile)
    return directory


# The upstream routes of the model catalog (gateway.catalog).
CATALOG_PATHS = ("/v1/image/generation/models", "/v1/image/generation/defaults")


class CatalogDown(httpx.AsyncBaseTransport):
    """The network to the emulator, where the catalog routes answer 503 (as a rate-limited
    or failing upstream would) and everything else goes through."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport(max_connections=10)
        self.catalog_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in CATALOG_PATHS:
            self.catalog_requests += 1
            return httpx.Response(503, text="upstream connect error")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
