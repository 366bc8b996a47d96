"""The baseline: a bare grpc.aio server answering CreateGeneration with fixed bytes.

`python -m bench.bare RESPONSE_FILE` serves `/stablecog.v1.GenerationService/CreateGeneration`
with the bytes of RESPONSE_FILE (the gateway's own answer to the same request, so both send
the same response) and the standard health service, on a free loopback port it logs as
`listening on PORT`. Nothing else: no interceptor, no metadata, no logging, no metrics. It is
the ceiling of Python gRPC on this machine.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "stablecog.v1.GenerationService"


Method = Callable[[bytes, Any], Awaitable[bytes]]


async def serve_methods(
    methods: Mapping[str, Method], options: Sequence[tuple[str, int]] = ()
) -> None:
    """Serve `methods` of GenerationService (raw bytes in and out) and the health service on
    a free loopback port, log `listening on PORT` once SERVING, and stop at SIGTERM. The
    bare server and the floor (bench.floor) both run on it."""
    server = grpc.aio.server(options=list(options))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {name: grpc.unary_unary_rpc_method_handler(m) for name, m in methods.items()},
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


async def serve(response: bytes) -> None:
    async def create(_request: bytes, _context: object) -> bytes:
        return response

    await serve_methods({"CreateGeneration": create})


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]).read_bytes()))
