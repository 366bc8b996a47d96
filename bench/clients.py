"""`python -m bench.clients`: the HTTP client options for the upstream call, side by side.

Each option sends the gateway's own request (the same JSON body and headers) to the
emulator, in a child process of its own (`python -m bench.clients OPTION SHAPE URL`) so
its CPU time is its own. Two load shapes, the gateway's: 16 calls in flight against an
upstream that answers at once (calls/s, CPU per call), and 2,000 calls held open at once
against a 2 s upstream (time until all are answered, CPU). Options are interleaved within
each run; each figure is the median of the runs.

Options:
- `httpx`: httpx.AsyncClient over gateway.transport.AiohttpTransport, as the gateway
  used it before this comparison (`client.post(path, json=..., headers=...)`);
- `httpx-trimmed`: the same transport called with a prebuilt httpx.Request (body encoded,
  headers built once, no client: no cookie jar, no URL merge);
- `httpx-aiohttp`: httpx.AsyncClient over the `httpx-aiohttp` package's transport;
- `aiohttp`: aiohttp.ClientSession.post directly.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

OPTIONS = ("httpx", "httpx-trimmed", "httpx-aiohttp", "aiohttp")
PATH = "/v1/image/generation/create"
BODY = {"prompt": "bench client", "num_outputs": 1}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sender(option: str, url: str, pool: int) -> tuple[Callable[[], Awaitable[int]], Any]:
    """A function sending one generation (returns the status) and what to close."""
    from bench.processes import KEY

    authorization = f"Bearer {KEY}"
    if option in ("httpx", "httpx-aiohttp"):
        import httpx

        if option == "httpx":
            from gateway.transport import AiohttpTransport

            transport: Any = AiohttpTransport(max_connections=pool)
        else:
            import aiohttp
            from httpx_aiohttp import AiohttpTransport as PackageTransport

            transport = PackageTransport(
                client=lambda: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=pool), timeout=aiohttp.ClientTimeout()
                )
            )
        client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(connect=10.0, read=None, write=None, pool=None),
            headers={"user-agent": "bench"},
            transport=transport,
        )

        async def send() -> int:
            response = await client.post(PATH, json=BODY, headers={"authorization": authorization})
            return response.status_code

        return send, client
    if option == "httpx-trimmed":
        import httpx

        from gateway.transport import AiohttpTransport

        trimmed = AiohttpTransport(max_connections=pool)
        full_url = httpx.URL(url + PATH)
        headers = {
            "user-agent": "bench",
            "content-type": "application/json",
            "authorization": authorization,
        }
        timeouts = {"timeout": {"connect": 10.0, "read": None, "write": None, "pool": None}}

        async def send() -> int:
            request = httpx.Request(
                "POST",
                full_url,
                headers=headers,
                content=json.dumps(BODY).encode(),
                extensions=timeouts,
            )
            response = await trimmed.handle_async_request(request)
            await response.aread()
            return response.status_code

        return send, trimmed
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool), timeout=aiohttp.ClientTimeout()
    )
    headers = {"user-agent": "bench", "authorization": authorization}

    async def send() -> int:
        async with session.post(
            url + PATH, data=json.dumps(BODY).encode(), headers=headers
        ) as response:
            await response.read()
            return response.status

    return send, session


async def child(option: str, shape: str, url: str, seconds: float, held: int) -> dict[str, float]:
    send, closer = await _sender(option, url, pool=max(held, 16))
    await send()  # connect
    started_cpu, started = cpu(), time.perf_counter()
    done = 0
    if shape == "flight":
        deadline = started + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                assert await send() == 200
                done += 1

        await asyncio.gather(*(worker() for _ in range(16)))
    else:
        statuses = await asyncio.gather(*(send() for _ in range(held)))
        assert all(s == 200 for s in statuses), set(statuses)
        done = held
    wall, used = time.perf_counter() - started, cpu() - started_cpu
    await closer.aclose() if hasattr(closer, "aclose") else await closer.close()
    return {"calls": done, "seconds": wall, "cpu_seconds": used}


def run_child(option: str, shape: str, url: str, seconds: float, held: int) -> dict[str, float]:
    argv = ["--child", option, shape, url, str(seconds), str(held)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.clients", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def compare(runs: int = 3, seconds: float = 3.0, held: int = 2000) -> dict[str, Any]:
    from bench.processes import Emulator

    results: dict[str, dict[str, list[float]]] = {o: {} for o in OPTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        emulator = Emulator(Path(tmp) / "emulator.log")
        await emulator.start()
        try:
            for _ in range(runs):
                await emulator.set_latency(0.0)
                for option in OPTIONS:
                    r = await asyncio.to_thread(
                        run_child, option, "flight", emulator.url, seconds, held
                    )
                    results[option].setdefault("calls_per_second", []).append(
                        r["calls"] / r["seconds"]
                    )
                    results[option].setdefault("cpu_us_per_call", []).append(
                        r["cpu_seconds"] / r["calls"] * 1e6
                    )
                await emulator.set_latency(2.0)
                for option in OPTIONS:
                    r = await asyncio.to_thread(
                        run_child, option, "held", emulator.url, seconds, held
                    )
                    results[option].setdefault("held_seconds", []).append(r["seconds"])
                    results[option].setdefault("held_cpu_seconds", []).append(r["cpu_seconds"])
        finally:
            emulator.kill()
    return {
        option: {k: statistics.median(v) for k, v in figures.items()}
        for option, figures in results.items()
    }


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        option, shape, url, seconds, held = sys.argv[2:7]
        result = asyncio.run(child(option, shape, url, float(seconds), int(held)))
        print(json.dumps(result))
        return 0
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    table = asyncio.run(compare(runs=runs))
    base = table["httpx"]
    print(
        "| option | calls/s, 16 in flight | CPU/call | 2,000 held, 2 s upstream: all answered | CPU |"
    )
    print("|---|---|---|---|---|")
    for option, f in table.items():
        print(
            f"| {option} | {f['calls_per_second']:,.0f} (x{f['calls_per_second'] / base['calls_per_second']:.2f}) "
            f"| {f['cpu_us_per_call']:.0f} us | {f['held_seconds']:.2f} s | {f['held_cpu_seconds']:.2f} s |"
        )
    Path("bench-clients.json").write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
