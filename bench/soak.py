"""`make soak`: a bounded soak of one gateway at a steady mixed load.

Starts the emulator, a private redis-server on a unix socket (the memory cache when
redis-server is not installed) and a gateway as child processes, then sends calls at a
fixed rate with bounded concurrency for SOAK_SECONDS (default 300, at most 600): valid
unseeded calls, seeded repeats (cache hits and coalescing), invalid requests, calls with
`idempotency-key` metadata, and calls after a fault queued through the emulator's control
API. Two accounts share the load (no key is configured: each call carries its own). It then checks:

- every call's status code is one its kind may get. A queued fault is taken by whichever
  upstream request comes next, so each call's expected code follows from the fault its
  last upstream attempt took (the emulator records it, and each call is tagged in its
  prompt);
- no invalid request reached the upstream;
- nothing was charged twice: per account, the credits the emulator's ledger charged
  equal the credits of the answers the gateway reported as paid generations (`miss`,
  `bypass`, `uncacheable`); and, once the gateway handles idempotency keys, at most one
  charged generation per key;
- the gateway's resident memory (VmRSS every 2 s): slope after warm-up (least squares,
  MB/min) and peak. Reported, not judged: the machine is shared.

Prints a summary table (and writes it as JSON with `--report PATH`); exits non-zero on an
unexpected code, an invalid request upstream, a double charge or a gateway that died.
The checks themselves are bench/soak_checks.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2

from bench.processes import GatewayProcess, line_in
from bench.soak_checks import (
    ACCOUNTS,
    FAULTS,
    KINDS,
    PAID,
    Outcome,
    judge,
    prompt_of,
    slope_per_minute,
    summary,
)
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc

INITIAL_CREDITS = 100_000_000
DEFAULT_SECONDS = 300.0
MAX_SECONDS = 600.0
RATE = 10.0  # calls per second
CONCURRENCY = 32
LATENCY = 0.2  # the emulator's generation time
RSS_EVERY = 2.0
# The emulator keeps its most recent 10,000 request records; the run must fit in them.
MAX_RECORDS = 10_000
SEED_POOL = 16  # distinct seeds at a time; the pool moves on every 200 seeded calls
IDEMPOTENT_REPEATS = 3  # calls per idempotency key


class Plan:
    """Which call comes next: the kinds in fixed proportions, shuffled by a seeded RNG."""

    def __init__(self, seed: int = 1) -> None:
        self._random = random.Random(seed)
        self._kinds = [k for k, weight in KINDS.items() for _ in range(weight)]
        self._seeded = 0
        self._idempotent = 0

    def next(self, n: int) -> tuple[Outcome, generation_pb2.GenerationRequest, list[Any]]:
        kind = self._random.choice(self._kinds)
        account = self._random.choice(sorted(ACCOUNTS))
        request = generation_pb2.GenerationRequest(num_outputs=self._random.choice((1, 2)))
        metadata: list[tuple[str, str]] = [("x-caller", "soak"), ("x-request-id", f"soak-{n}")]
        key = None
        if kind == "seeded":
            seed = (self._seeded // 200) * SEED_POOL + self._random.randrange(SEED_POOL)
            self._seeded += 1
            tag = f"s{seed}"
            request.seed = seed
            request.num_outputs = 2  # one entry per seed, whatever the account
        elif kind == "idempotent":
            index = self._idempotent // IDEMPOTENT_REPEATS
            key = f"soak-key-{index}"
            self._idempotent += 1
            # A key belongs to one account (another account's same key is another record).
            account = sorted(ACCOUNTS)[index % len(ACCOUNTS)]
            tag = key
            request.num_outputs = 1
            metadata.append(("idempotency-key", key))
        else:
            tag = f"{kind[0]}{n}"
        request.prompt = prompt_of(tag)
        if kind == "invalid":
            request.width = 1001  # not a multiple of 8
        # No key configured: each call carries its account's.
        metadata.append(("authorization", f"Bearer {ACCOUNTS[account]}"))
        return Outcome(n, kind, account, tag, idempotency_key=key), request, metadata


def error_reason(error: grpc.aio.AioRpcError) -> str:
    for name, value in error.trailing_metadata() or ():
        if name == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return ""


async def one_call(
    stub: generation_pb2_grpc.GenerationServiceStub,
    outcome: Outcome,
    request: generation_pb2.GenerationRequest,
    metadata: list[Any],
) -> None:
    started = time.monotonic()
    try:
        call = stub.CreateGeneration(request, metadata=metadata, timeout=60.0)
        response = await call
        outcome.code = "OK"
        outcome.cache_result = dict(await call.trailing_metadata()).get("x-cache", "")
        if outcome.cache_result in PAID:
            outcome.credits = response.settings.num_outputs
    except grpc.aio.AioRpcError as error:
        outcome.code = error.code().name
        outcome.reason = error_reason(error)
    outcome.seconds = time.monotonic() - started


class Children:
    """The emulator, redis-server and the gateway, stopped by their process ids."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.emulator: subprocess.Popen[bytes] | None = None
        self.redis: subprocess.Popen[bytes] | None = None
        self.gateway: GatewayProcess | None = None
        self.emulator_url = ""
        self.cache = "memory"

    async def start(self) -> None:
        log = self.workdir / "emulator.log"
        with log.open("wb") as out:
            self.emulator = subprocess.Popen(
                [sys.executable, "-m", "emulator", "--listen", "127.0.0.1:0"]
                + ["--latency", str(LATENCY), "--rate-limit", "0", "--queue-limit", "0"]
                + ["--initial-credits", str(INITIAL_CREDITS)]
                + [arg for key in ACCOUNTS.values() for arg in ("--account", key)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        found = await line_in(log, r"listening on (http://127\.0\.0\.1:\d+)", self.emulator, 20)
        self.emulator_url = found.group(1)
        env = {
            "STABLECOG_API_URL": self.emulator_url,
            "GATEWAY_CALLER": "soak",
        }
        redis_server = shutil.which("redis-server")
        if redis_server:
            socket_path = self.workdir / "redis.sock"
            self.redis = subprocess.Popen(
                [
                    *(redis_server, "--port", "0", "--unixsocket", str(socket_path)),
                    *("--unixsocketperm", "700", "--save", "", "--appendonly", "no"),
                    *("--dir", str(self.workdir)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await self._redis_ready(socket_path)
            env |= {"GATEWAY_CACHE": "redis", "GATEWAY_REDIS_URL": f"unix://{socket_path}?db=0"}
            self.cache = "redis"
        self.gateway = GatewayProcess(
            self.emulator_url, self.workdir / "gateway.log", env, api_key=None
        )
        await self.gateway.start()

    async def _redis_ready(self, socket_path: Path) -> None:
        assert self.redis is not None
        for _ in range(200):
            if self.redis.poll() is not None:
                raise RuntimeError("redis-server exited at start")
            try:
                reader, writer = await asyncio.open_unix_connection(str(socket_path))
                writer.write(b"PING\r\n")
                answered = await reader.read(16)
                writer.close()
                if answered.startswith(b"+PONG"):
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for process in (self.redis, self.emulator):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def drive(
    target: str, emulator_url: str, seconds: float, rate: float, pid: int
) -> tuple[list[Outcome], list[tuple[float, float]], int]:
    """Send calls at `rate` for `seconds`; returns the outcomes, the RSS samples and how
    many calls started late (all `CONCURRENCY` slots were busy)."""
    plan, outcomes, slots = Plan(), [], asyncio.Semaphore(CONCURRENCY)
    samples: list[tuple[float, float]] = []
    late, tasks = 0, set()
    faults = sorted(FAULTS)
    fault_random = random.Random(2)
    async with (
        grpc.aio.insecure_channel(target) as channel,
        httpx.AsyncClient(base_url=emulator_url) as control,
    ):
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        start = time.monotonic()
        next_sample, n = start, 0

        async def run(outcome: Outcome, request: Any, metadata: list[Any]) -> None:
            try:
                if outcome.kind == "faulted":
                    mode = fault_random.choice(faults)
                    queued = await control.post(
                        "/_emulator/faults", json={"mode": mode, "count": 1, **FAULTS[mode]}
                    )
                    queued.raise_for_status()
                await one_call(stub, outcome, request, metadata)
            finally:
                slots.release()

        while (now := time.monotonic()) < start + seconds:
            if now >= next_sample:
                rss = rss_mb(pid)
                if rss is not None:
                    samples.append((now - start, rss))
                next_sample += RSS_EVERY
            due = start + n / rate
            if now < due:
                await asyncio.sleep(min(due - now, max(next_sample - now, 0.0)))
                continue
            if slots.locked():
                late += 1
            await slots.acquire()
            outcome, request, metadata = plan.next(n)
            outcomes.append(outcome)
            task = asyncio.create_task(run(outcome, request, metadata))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=120)
        await control.delete("/_emulator/faults")  # any fault nobody took
    return outcomes, samples, late


async def ledger(emulator_url: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The emulator's request records (wait until none is still running) and each
    account's charged credits."""
    async with httpx.AsyncClient(base_url=emulator_url, timeout=30) as control:
        for _ in range(600):
            records = (await control.get("/_emulator/requests")).json()["requests"]
            if all(r["completed_at"] is not None or r["connection_dropped"] for r in records):
                break
            await asyncio.sleep(0.1)
        charged = {}
        for name, key in ACCOUNTS.items():
            digest = hashlib.sha256(key.encode()).hexdigest()
            account = (await control.get(f"/_emulator/accounts/{digest}")).json()
            charged[name] = account["initial_credits"] - account["balance"]
    return records, charged


def soak_seconds() -> float:
    raw = os.environ.get("SOAK_SECONDS", "")
    seconds = float(raw) if raw else DEFAULT_SECONDS
    if not 0 < seconds <= MAX_SECONDS:
        raise SystemExit(f"SOAK_SECONDS must be in (0, {MAX_SECONDS:.0f}], got {raw}")
    return seconds


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    seconds = soak_seconds()
    rate = float(os.environ.get("SOAK_RATE", RATE))
    if rate * seconds > MAX_RECORDS:  # about half a call reaches the upstream
        raise SystemExit(f"SOAK_RATE {rate} for {seconds:.0f} s overflows the emulator's records")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        children = Children(Path(tmp))
        try:
            await children.start()
            gateway = children.gateway
            assert gateway is not None and gateway.process is not None
            print(
                f"soak: {seconds:.0f} s at {rate:g} calls/s (at most {CONCURRENCY} in flight), "
                f"cache {children.cache}, gateway pid {gateway.process.pid}",
                flush=True,
            )
            outcomes, samples, late = await drive(
                gateway.target, children.emulator_url, seconds, rate, gateway.process.pid
            )
            alive = gateway.process.poll() is None
            records, charged = await ledger(children.emulator_url)
        finally:
            children.stop()
    failures, figures = judge(outcomes, records, charged)
    if len(records) >= MAX_RECORDS:
        failures.append("the emulator's request records overflowed: lower SOAK_RATE")
    if not alive:
        failures.append("the gateway died during the soak")
    warm = [(t, m) for t, m in samples if t >= min(60.0, seconds / 5)]
    slope = slope_per_minute(warm)
    report = {
        "seconds": seconds,
        "rate": rate,
        "cache": children.cache,
        "calls": len(outcomes),
        "late_starts": late,
        "kinds": summary(outcomes),
        "rss_mb": {
            "samples": len(samples),
            "first": round(samples[0][1], 1) if samples else None,
            "peak": round(max(m for _, m in samples), 1) if samples else None,
            "slope_mb_per_min_after_warmup": round(slope, 3) if slope is not None else None,
        },
        **figures,
        "failures": failures,
    }
    print_report(report)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return 1 if failures else 0


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{'kind':<11} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  codes / cache results")
    for kind, row in report["kinds"].items():
        codes = " ".join(f"{c}={k}" for c, k in sorted(row["codes"].items()))
        cache = " ".join(f"{c}={k}" for c, k in sorted(row["cache"].items()))
        print(
            f"{kind:<11} {row['calls']:>6} {row['p50_ms'] or '-':>8} {row['p99_ms'] or '-':>8}"
            f"  {codes}  [{cache}]"
        )
    rss = report["rss_mb"]
    print(
        f"\ncalls {report['calls']} in {report['seconds']:.0f} s (late starts "
        f"{report['late_starts']}); upstream requests {report['upstream_records']}; faults "
        f"taken {report['faults_taken']}; circuit refusals {report['circuit_refusals']}"
    )
    print(
        f"credits charged {report['charged']} = reported paid {report['reported_paid']}; "
        f"idempotency keys {report['idempotency_keys']}, most generations per key "
        f"{report['most_generations_per_key']}"
    )
    print(
        f"gateway RSS: first {rss['first']} MB, peak {rss['peak']} MB, slope after warm-up "
        f"{rss['slope_mb_per_min_after_warmup']} MB/min ({rss['samples']} samples)"
    )
    if report["failures"]:
        print(f"\nFAILED ({len(report['failures'])}):")
        for failure in report["failures"][:50]:
            print(f"  {failure}")
    else:
        print("\nOK: no unexpected code, nothing charged twice")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
