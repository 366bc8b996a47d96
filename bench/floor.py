"""The floor: the least a Python gRPC-to-REST gateway does, on the gateway's own stack.

`python -m bench.floor UPSTREAM_URL BODY_FILE RESPONSE_FILE` serves CreateGeneration by
POSTing the bytes of BODY_FILE (the gateway's own upstream JSON for the bench's miss
request) to UPSTREAM_URL's create endpoint with aiohttp (one session, a pool as large as
the gateway's), reading the answer, and returning the bytes of RESPONSE_FILE. Nothing
else: no decoding, validation, translation, cache, metrics or logs. grpc.aio with the
gateway's pending-request limits, the health service, and a `Counts` method (raw bytes,
JSON) for the bench to check that every call reached the upstream and got a 200. It
logs `listening on PORT` once health says SERVING.

What it costs is what Python gRPC plus aiohttp cost on this machine: no gateway written on
them can do better, so a gateway figure beside it shows what the gateway's own work adds.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "stablecog.v1.GenerationService"
CREATE_PATH = "/v1/image/generation/create"
# As the gateway's defaults (gateway.app, gateway.capacity): the call cap and grpc's
# pending-request limits above it.
POOL = 10000
SERVER_OPTIONS = [
    ("grpc.server.max_pending_requests", 20000),
    ("grpc.server.max_pending_requests_hard_limit", 40000),
]


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(upstream: str, body: bytes, response: bytes) -> None:
    counts = {"ok": 0, "failed": 0}
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL),
        timeout=aiohttp.ClientTimeout(total=120),
    )
    headers = {
        "authorization": f"Bearer {os.environ['STABLECOG_API_KEY']}",
        "content-type": "application/json",
    }
    url = upstream.rstrip("/") + CREATE_PATH

    async def create(_request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                status = answer.status
        except aiohttp.ClientError as error:
            counts["failed"] += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, type(error).__name__)
        if status != 200:
            counts["failed"] += 1
            await context.abort(grpc.StatusCode.INTERNAL, f"upstream HTTP {status}")
        counts["ok"] += 1
        return response

    async def report(_request: bytes, _context: object) -> bytes:
        return json.dumps(counts).encode()

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "CreateGeneration": grpc.unary_unary_rpc_method_handler(create),
                    "Counts": grpc.unary_unary_rpc_method_handler(report),
                },
            ),
        )
    )
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=None)
    await session.close()


if __name__ == "__main__":
    raise_open_files()
    upstream_url, body_file, response_file = sys.argv[1:4]
    asyncio.run(serve(upstream_url, Path(body_file).read_bytes(), Path(response_file).read_bytes()))
