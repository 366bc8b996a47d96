"""h2load (Debian's `nghttp2-client`) as the load generator: a separate, efficient process.

gRPC over h2load: the body file holds one length-prefixed message (flag byte, 4-byte
big-endian length, the message), sent with `content-type: application/grpc` and
`te: trailers`. h2load sees only the HTTP status (always 200 for gRPC), so the suite checks
every call's grpc-status from the gateway's own counters afterwards.

Open loop: h2load's `--rps` fires every client's timer at the same instant, so N clients in
one process send in bursts of N. Each client here is its own h2load process with one
connection and `--rps rate/N`, started 1/rate seconds after the previous one: the clients'
timers are staggered and the arrivals are spread evenly.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

H2LOAD = shutil.which("h2load")
GRPC_HEADERS = ("-H", "content-type: application/grpc", "-H", "te: trailers")


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class Load:
    """What one h2load run (or a staggered set of them) did."""

    done: int
    succeeded: int
    seconds: float
    latencies_us: list[int] = field(repr=False, default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies_us:
            return float("nan")
        ordered = sorted(self.latencies_us)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1000

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies_us) / 1000 if self.latencies_us else float("nan")


def _parse(output: str) -> tuple[int, int]:
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if found is None:
        raise RuntimeError(f"cannot read h2load's output:\n{output}")
    return int(found.group(1)), int(found.group(2))


def _latencies(log: Path) -> list[int]:
    out = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out.append(int(parts[2]))
    return out


async def _h2load(args: list[str], log: Path, within: float) -> tuple[int, int, str]:
    if H2LOAD is None:
        raise RuntimeError("h2load is not installed (Debian package nghttp2-client)")
    process = await asyncio.create_subprocess_exec(
        H2LOAD,
        f"--log-file={log}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"h2load did not finish within {within} s: {args}") from None
    text = out.decode(errors="replace")
    done, ok = _parse(text)
    return done, ok, text


def _target_args(url: str, body: Path, grpc: bool, headers: tuple[str, ...]) -> list[str]:
    args = ["-d", str(body), *headers]
    if grpc:
        args += list(GRPC_HEADERS)
    else:
        args += ["--h1"]
    return [*args, url]


async def closed(
    url: str,
    body: Path,
    *,
    grpc: bool = True,
    clients: int = 1,
    streams: int = 16,
    requests: int = 0,
    duration: float = 0.0,
    headers: tuple[str, ...] = (),
    within: float = 120.0,
) -> Load:
    """Closed loop: `clients` connections, each keeping `streams` calls in flight, for
    `requests` calls in all or for `duration` seconds."""
    bound = ["-n", str(requests)] if requests else ["-D", f"{round(duration * 1000)}ms"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        started = time.perf_counter()
        done, ok, _ = await _h2load(
            [
                "-c",
                str(clients),
                "-m",
                str(streams),
                *bound,
                *_target_args(url, body, grpc, headers),
            ],
            log,
            within,
        )
        seconds = time.perf_counter() - started
        latencies = _latencies(log)
    if duration and not requests:
        seconds = duration
    return Load(done, ok, seconds, latencies)


async def open_loop(
    url: str,
    body: Path,
    *,
    rate: float,
    duration: float,
    grpc: bool = True,
    clients: int = 8,
    streams: int = 16,
    headers: tuple[str, ...] = (),
) -> Load:
    """Open loop at `rate` calls/s in all: `clients` h2load processes of one connection
    each, `--rps rate/clients`, started 1/rate s apart (see the module docstring)."""
    per_client = max(1, round(rate / clients))
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i in range(clients):
            log = Path(tmp) / f"log{i}"
            args = [
                "-c",
                "1",
                "-m",
                str(streams),
                f"--rps={per_client}",
                "-D",
                f"{round(duration * 1000)}ms",
                *_target_args(url, body, grpc, headers),
            ]
            runs.append((asyncio.ensure_future(_h2load(args, log, duration + 60)), log))
            await asyncio.sleep(1 / rate)
        done = ok = 0
        latencies: list[int] = []
        for run, log in runs:
            d, o, _ = await run
            done, ok = done + d, ok + o
            latencies += _latencies(log)
    return Load(done, ok, duration, latencies)
