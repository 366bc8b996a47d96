"""`make bench`: what the gateway adds, measured against the emulator on loopback.

Starts the emulator and one gateway as child processes, drives them with a grpc.aio
client from this process, and prints throughput and latency percentiles for:

- cache hits (the gateway's own cost: no upstream call),
- upstream round trips with zero emulator latency (gateway + httpx + emulator),
- many slow calls held open at once (the normal load: seconds-long generations),
  with the gateway's resident memory.

Every phase is bounded by a call count and a time limit. Client and servers share the
machine's cores, so numbers are comparable between runs on one machine, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.processes import GatewayProcess, line_in
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc

KEY = "sc-" + hashlib.sha256(b"bench account").hexdigest()


async def start_emulator(latency: float, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            str(latency),
            "--rate-limit",
            "0",
            "--queue-limit",
            "0",
            "--account",
            KEY,
            "--initial-credits",
            "100000000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    listening = await line_in(log_path, r"listening on (http://127\.0\.0\.1:\d+)", process, 20.0)
    url = listening.group(1)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{url}/v1/health")).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError("emulator did not start")


async def set_latency(url: str, seconds: float) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/_emulator/config", json={"latency_seconds": seconds})
        response.raise_for_status()


async def drive(
    stub: generation_pb2_grpc.GenerationServiceStub,
    make_request: type[generation_pb2.GenerationRequest] | object,
    *,
    concurrency: int,
    total: int,
    time_limit: float,
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            request = make_request(issued)  # type: ignore[operator]
            started = time.perf_counter()
            await stub.CreateGeneration(request, timeout=60)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


def report(name: str, concurrency: int, done: int, seconds: float, latencies: list[float]) -> None:
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        f"{name:<28} c={concurrency:<5} calls={done:<6} {done / seconds:>8.0f}/s  "
        f"p50={pct(0.50):7.2f} ms  p99={pct(0.99):7.2f} ms  mean={statistics.fmean(latencies) * 1000:7.2f} ms"
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Receiver:
    """An OTLP/gRPC trace receiver that counts spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    async def export(self, request: Any, context: Any) -> Any:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans += sum(
            len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def tracing_cost(url: str, tmp: Path, args: Any, seeded_off: Any) -> None:
    """The same two paths through gateways with tracing off and on (every call sampled,
    exported over OTLP/gRPC to a receiver in this process), interleaved."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    receiver = _Receiver()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        receiver.export,
                        request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        for tracing in ("off", "on", "off", "on"):
            env = {"STABLECOG_API_URL": url, "STABLECOG_API_KEY": KEY}
            if tracing == "on":
                env |= {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                }
            gateway = GatewayProcess(env, tmp / f"gateway-tracing-{tracing}.log")
            try:
                await gateway.start()
                async with grpc.aio.insecure_channel(gateway.target) as channel:
                    stub = generation_pb2_grpc.GenerationServiceStub(channel)
                    await stub.CreateGeneration(seeded_off)
                    done, secs, lat = await drive(
                        stub,
                        lambda _: seeded_off,
                        concurrency=16,
                        total=args.calls,
                        time_limit=args.seconds,
                    )
                    report(f"cache hit, tracing {tracing}", 16, done, secs, lat)
                    done, secs, lat = await drive(
                        stub,
                        lambda i: generation_pb2.GenerationRequest(
                            prompt=f"traced {i}", num_outputs=1
                        ),
                        concurrency=16,
                        total=args.calls,
                        time_limit=args.seconds,
                    )
                    report(f"upstream round trip, tracing {tracing}", 16, done, secs, lat)
            finally:
                gateway.stop()
        print(f"spans received while tracing on: {receiver.spans}")
    finally:
        await server.stop(grace=None)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per phase (bound)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per phase")
    parser.add_argument("--held-open", type=int, default=2000, help="slow calls held at once")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        emulator, url = await start_emulator(latency=0.0, log_path=Path(tmp) / "emulator.log")
        # The gateway as shipped: default log level, one access-log line per call.
        gateway = GatewayProcess(
            {"STABLECOG_API_URL": url, "STABLECOG_API_KEY": KEY}, Path(tmp) / "gateway.log"
        )
        try:
            await gateway.start()
            assert gateway.process is not None
            print(
                f"gateway pid {gateway.process.pid}: RSS at start {rss_mb(gateway.process.pid):.0f} MB"
            )
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                seeded = generation_pb2.GenerationRequest(prompt="bench", seed=1, num_outputs=1)
                await stub.CreateGeneration(seeded)  # fill the cache
                for concurrency in (1, 16, 64):
                    done, secs, lat = await drive(
                        stub,
                        lambda _: seeded,
                        concurrency=concurrency,
                        total=args.calls,
                        time_limit=args.seconds,
                    )
                    report("cache hit (gateway only)", concurrency, done, secs, lat)
                for concurrency in (1, 16, 64):
                    done, secs, lat = await drive(
                        stub,
                        lambda i: generation_pb2.GenerationRequest(
                            prompt=f"bench {i}", num_outputs=1
                        ),
                        concurrency=concurrency,
                        total=args.calls,
                        time_limit=args.seconds,
                    )
                    report("upstream round trip", concurrency, done, secs, lat)

                await set_latency(url, 2.0)
                n = args.held_open
                done, secs, lat = await drive(
                    stub,
                    lambda i: generation_pb2.GenerationRequest(prompt=f"slow {i}", num_outputs=1),
                    concurrency=n,
                    total=n,
                    time_limit=args.seconds * 4,
                )
                report("held open, upstream 2 s", n, done, secs, lat)
                print(
                    f"gateway RSS after {n} concurrent slow calls: {rss_mb(gateway.process.pid):.0f} MB"
                )
            gateway.kill()
            await set_latency(url, 0.0)
            await tracing_cost(url, Path(tmp), args, seeded_off=seeded)
        finally:
            gateway.kill()
            emulator.kill()
            emulator.wait(timeout=10)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(main()))
