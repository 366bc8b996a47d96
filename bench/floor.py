"""The floor: the least a Python gRPC-to-REST gateway does, on the gateway's own stack.

`python -m bench.floor --hits REQUEST_FILE RESPONSE_FILE` serves cache hits with the least a
gateway's hit must do: find the caller's key in the metadata, look the request's bytes up
in a dict, answer RESPONSE_FILE's bytes with the `x-cache` and `x-request-id` trailers,
count the call (started, handled, a cache hit, its latency in a histogram's buckets) in
plain numbers, and queue one access line's fields for a writer thread that encodes them
with orjson (in batches, as the gateway's writer does). A request
other than REQUEST_FILE's bytes is NOT_FOUND.

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
import bisect
import collections
import json
import os
import random
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc

from bench.bare import serve_methods

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


Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def forwarder(upstream: str, body: bytes, response: bytes, counts: dict[str, int]) -> Handler:
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

    return create


def hits(request: bytes, response: bytes, counts: dict[str, int]) -> Handler:
    # Imported here: the forwarding floor (and its cold start) imports grpc and aiohttp only.
    import orjson

    # The counts as plain numbers, the least any exporter must do per call (a scrape
    # would read them); buckets as the gateway's histogram.
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
    series = {"started": 0, "handled_ok": 0, "cache_hit": 0, "sum": 0.0}
    buckets = [0] * (len(bounds) + 1)
    entries = {request: response}
    ids = random.Random()
    lines: collections.deque[dict[str, object]] = collections.deque()

    def write_lines() -> None:
        while True:
            time.sleep(0.02)
            batch = []
            while lines:
                batch.append(orjson.dumps(lines.popleft()).decode())
            if batch:
                os.write(2, ("\n".join(batch) + "\n").encode())

    threading.Thread(target=write_lines, daemon=True).start()

    async def hit(raw: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        began = time.perf_counter()
        series["started"] += 1
        key = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        found = entries.get(raw)
        if found is None:
            counts["failed"] += 1
            await context.abort(grpc.StatusCode.NOT_FOUND, "not the bench's request")
        request_id = f"{ids.getrandbits(128):032x}"
        context.set_trailing_metadata((("x-cache", "hit"), ("x-request-id", request_id)))
        counts["ok"] += 1
        seconds = time.perf_counter() - began
        series["handled_ok"] += 1
        series["cache_hit"] += 1
        series["sum"] += seconds
        buckets[bisect.bisect_left(bounds, seconds)] += 1
        entry = {
            "time": time.time(),
            "level": "info",
            "logger": "gateway.access",
            "message": "call",
            "request_id": request_id,
            "method": "CreateGeneration",
            "grpc_code": "OK",
            "latency_seconds": round(seconds, 6),
            "cache_result": "hit",
            "account": str(len(key)),
        }
        lines.append(entry)
        return found

    return hit


async def serve(create: Handler, counts: dict[str, int]) -> None:
    async def report(_request: bytes, _context: object) -> bytes:
        return json.dumps(counts).encode()

    await serve_methods({"CreateGeneration": create, "Counts": report}, SERVER_OPTIONS)


async def main(argv: list[str]) -> None:
    counts = {"ok": 0, "failed": 0}
    if argv[0] == "--hits":
        request, response = Path(argv[1]).read_bytes(), Path(argv[2]).read_bytes()
        await serve(hits(request, response, counts), counts)
    else:
        upstream_url, body, response = (
            argv[0],
            Path(argv[1]).read_bytes(),
            Path(argv[2]).read_bytes(),
        )
        await serve(forwarder(upstream_url, body, response, counts), counts)


if __name__ == "__main__":
    raise_open_files()
    asyncio.run(main(sys.argv[1:4]))
