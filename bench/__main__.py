"""`make bench`: what the gateway costs, each figure beside a baseline measured in the same run.

Load comes from h2load (bench.h2load), a separate C process; the gateway, the emulator and
the bare baseline server (bench.bare) are child processes on loopback. Every figure is the
median of `--runs` runs, and each run measures the baseline and the gateway one after the
other (interleaved), so a busy machine slows both alike: compare ratios, not absolutes.
h2load cannot see grpc-status, so every phase checks the gateway's own counters
(grpc_server_handled_total) to prove each call it sent ended OK.

Rows:
  1. bare grpc.aio server returning the gateway's response: calls/s, p50, CPU per call;
  2. cache hit through the gateway as shipped (default settings, access log on), as (1);
  3. miss path against the emulator answering at once: latency the gateway adds over
     calling the REST endpoint directly (same body, same open-loop rate), at 25/50/90% of
     the gateway's saturating rate;
  4. 10,000 concurrent generations against a 5 s upstream: errors by code, time until all
     are answered, peak RSS (VmHWM), CPU, memory per held call;
  5. 1,000 identical concurrent seeded calls: upstream requests (must be 1), time;
  6. cold start: process start to SERVING, beside the bare server's.

Rows 2, 3, 4 and 6 also measure the floor (bench.floor), the least any gateway on this stack
costs: for hits, grpc.aio answering from a dict with a hit's least duties (trailers, the
grpc_server_* counts, one access line); otherwise grpc.aio forwarding each call to the same
upstream with aiohttp and nothing else.

`--quick` is the smoke version run by the test suite: the same code, tiny counts, one run.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import h2load, processes
from bench.h2load import Load, grpc_frame
from bench.processes import (
    KEY,
    ROOT,
    BareServer,
    Emulator,
    FloorServer,
    GatewayProcess,
    cpu_seconds,
    memory_mb,
)
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.translate import request_to_json

METHOD_PATH = "/stablecog.v1.GenerationService/CreateGeneration"
CREATE_PATH = "/v1/image/generation/create"


@dataclass(frozen=True)
class Shape:
    """How big each phase is."""

    runs: int
    seconds: float  # per closed- or open-loop measurement
    held: int  # row 4: concurrent slow calls
    held_latency: float  # row 4: the upstream's answer time
    identical: int  # row 5
    cold_starts: int  # row 6


FULL = Shape(runs=3, seconds=3.0, held=10000, held_latency=5.0, identical=1000, cold_starts=5)
QUICK = Shape(runs=1, seconds=0.5, held=200, held_latency=0.5, identical=50, cold_starts=1)


PHASES = ("hits", "misses", "identical", "held", "cold")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(
        self, tmp: Path, shape: Shape, env: dict[str, str] | None = None, uvloop: bool = False
    ) -> None:
        self.tmp, self.shape, self.env, self.uvloop = tmp, shape, env or {}, uvloop
        self.emulator = Emulator(tmp / "emulator.log")
        self.results: dict[str, Any] = {}
        self._gateways = 0
        # The floor server's upstream body and response (set by `run`).
        self._floor_files: tuple[Path, Path] | None = None

    # --- helpers ---

    def body(self, name: str, message: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(message)
        return path

    async def gateway(self, **env: str) -> GatewayProcess:
        self._gateways += 1
        gateway = GatewayProcess(
            self.emulator.url,
            self.tmp / f"gateway{self._gateways}.log",
            {**self.env, **env},
            uvloop=self.uvloop,
        )
        await gateway.start()
        return gateway

    async def checked(
        self, server: GatewayProcess | FloorServer, load: Callable[[], Awaitable[Load]]
    ) -> tuple[Load, dict[str, float], float]:
        """Run `load` against `server`: the load, the counters' deltas, CPU seconds used.
        Fails unless every call h2load finished ended OK by the server's own count."""
        before, cpu = await server.counters(), cpu_seconds(server.pid)
        result = await load()
        cpu = cpu_seconds(server.pid) - cpu
        after = await server.counters()
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        delta = {k: v for k, v in delta.items() if v}
        if delta.get("OK", 0) < result.done or result.succeeded != result.done:
            raise RuntimeError(f"not every call ended OK: h2load {result}, server {delta}")
        return result, delta, cpu

    async def floor(self, name: str) -> FloorServer:
        assert self._floor_files is not None
        body, response = self._floor_files
        floor = FloorServer.forwarding(self.emulator.url, body, response, self.tmp / f"{name}.log")
        await floor.start()
        return floor

    @staticmethod
    def url(target: str) -> str:
        return f"http://{target}{METHOD_PATH}"

    # --- rows 1 and 2 ---

    async def hits(
        self, gateway: GatewayProcess, bare: BareServer, floor: FloorServer, body: Path
    ) -> None:
        bare_runs: list[dict[str, float]] = []
        floor_runs: list[dict[str, float]] = []
        hit_runs: list[dict[str, float]] = []
        for _ in range(self.shape.runs):
            cpu = cpu_seconds(bare.pid)
            load = await h2load.closed(self.url(bare.target), body, duration=self.shape.seconds)
            cpu = cpu_seconds(bare.pid) - cpu
            bare_runs.append(_throughput(load, cpu))
            load, _, cpu = await self.checked(
                floor,
                lambda: h2load.closed(self.url(floor.target), body, duration=self.shape.seconds),
            )
            floor_runs.append(_throughput(load, cpu))
            load, _, cpu = await self.checked(
                gateway,
                lambda: h2load.closed(self.url(gateway.target), body, duration=self.shape.seconds),
            )
            hit_runs.append(_throughput(load, cpu))
        bare_row, floor_row, hit_row = _medians(bare_runs), _medians(floor_runs), _medians(hit_runs)
        hit_row["ratio"] = hit_row["calls_per_second"] / bare_row["calls_per_second"]
        floor_row["ratio"] = floor_row["calls_per_second"] / bare_row["calls_per_second"]
        self.results["1_bare_server"] = bare_row
        self.results["2_cache_hit"] = hit_row
        self.results["2_floor_hit"] = floor_row

    # --- row 3 ---

    async def misses(self, gateway: GatewayProcess, grpc_body: Path, rest_body: Path) -> None:
        floor = await self.floor("floor-misses")
        try:
            self.results["3_miss_added_latency"] = await self._misses(
                gateway, floor, grpc_body, rest_body
            )
        finally:
            floor.stop()

    async def _misses(
        self, gateway: GatewayProcess, floor: FloorServer, grpc_body: Path, rest_body: Path
    ) -> dict[str, Any]:
        rest_url = self.emulator.url + CREATE_PATH
        rest_headers = (
            "-H",
            f"authorization: Bearer {KEY}",
            "-H",
            "content-type: application/json",
        )
        servers = {"gateway": gateway, "floor": floor}
        saturation: dict[str, list[float]] = {"gateway": [], "floor": [], "direct": []}
        for _ in range(self.shape.runs):
            for name, server in servers.items():
                # Over the open-loop phases' layout (8 connections), so that 90% of it is
                # below what they can carry.
                load, _, _ = await self.checked(
                    server,
                    lambda server=server: h2load.closed(
                        self.url(server.target),
                        grpc_body,
                        clients=8,
                        streams=2,
                        duration=self.shape.seconds,
                    ),
                )
                saturation[name].append(load.rate)
            direct = await h2load.closed(
                rest_url,
                rest_body,
                grpc=False,
                clients=16,
                streams=1,
                duration=self.shape.seconds,
                headers=rest_headers,
            )
            saturation["direct"].append(direct.rate)
        saturating = median(saturation["gateway"])
        row: dict[str, Any] = {
            "saturating_calls_per_second": saturating,
            "direct_saturating_calls_per_second": median(saturation["direct"]),
            "floor_saturating_calls_per_second": median(saturation["floor"]),
            "saturation_ratio": saturating / median(saturation["direct"]),
        }
        for fraction in (0.25, 0.5, 0.9):
            rate = fraction * saturating
            runs: list[dict[str, float]] = []
            for _ in range(self.shape.runs):
                direct = await h2load.open_loop(
                    rest_url,
                    rest_body,
                    rate=rate,
                    duration=self.shape.seconds,
                    grpc=False,
                    streams=1,
                    headers=rest_headers,
                )
                run = {
                    "direct_p50_ms": direct.percentile(0.5),
                    "direct_p99_ms": direct.percentile(0.99),
                }
                # The floor's keys carry its name; the gateway's are the row's own.
                for name, prefix in (("floor", "floor_"), ("gateway", "")):
                    through, _, _ = await self.checked(
                        servers[name],
                        lambda rate=rate, server=servers[name]: h2load.open_loop(
                            self.url(server.target),
                            grpc_body,
                            rate=rate,
                            duration=self.shape.seconds,
                        ),
                    )
                    run[f"{name}_p50_ms"] = through.percentile(0.5)
                    run[f"{name}_p99_ms"] = through.percentile(0.99)
                    for p in (50, 99):
                        added = through.percentile(p / 100) - direct.percentile(p / 100)
                        run[f"{prefix}added_p{p}_ms"] = added
                    if name == "gateway":
                        run["achieved_calls_per_second"] = through.rate
                runs.append(run)
            row[f"load_{round(fraction * 100)}"] = {"rate": rate, **_medians(runs)}
        return row

    # --- row 4 ---

    async def held_open(self, grpc_body: Path) -> None:
        await self.emulator.set_latency(self.shape.held_latency)
        runs: list[dict[str, float]] = []
        floor_runs: list[dict[str, float]] = []
        codes: dict[str, float] = {}
        try:
            for i in range(self.shape.runs):
                floor = await self.floor(f"floor-held{i}")
                try:
                    floor_runs.append((await self._held(floor, grpc_body))[0])
                finally:
                    floor.stop()
                gateway = await self.gateway()
                try:
                    emulator_cpu = cpu_seconds(self.emulator.pid)
                    run, codes = await self._held(gateway, grpc_body)
                    run["gateway_cpu_seconds"] = run.pop("cpu_seconds")
                    run["emulator_cpu_seconds"] = cpu_seconds(self.emulator.pid) - emulator_cpu
                    runs.append(run)
                finally:
                    gateway.stop()
        finally:
            await self.emulator.set_latency(0.0)
        self.results["4_held_open"] = {
            "calls": self.shape.held,
            "upstream_seconds": self.shape.held_latency,
            "codes_last_run": codes,
            **_medians(runs),
            "floor": _medians(floor_runs),
        }

    async def _held(
        self, server: GatewayProcess | FloorServer, grpc_body: Path
    ) -> tuple[dict[str, float], dict[str, float]]:
        """One run of row 4 against a fresh `server`: its figures, and its answers by code.
        Fails unless h2load finished all the calls, each answered OK."""
        n = self.shape.held
        idle_mb = memory_mb(server.pid, "VmRSS")
        clients = max(1, n // 1000)
        load, delta, cpu = await self.checked(
            server,
            lambda: h2load.closed(
                self.url(server.target),
                grpc_body,
                clients=clients,
                streams=n // clients,
                requests=n,
                within=120,
            ),
        )
        peak_mb = memory_mb(server.pid, "VmHWM")
        if load.done != n:
            raise RuntimeError(f"h2load finished {load.done} of {n} calls: {load}")
        codes = {k: v for k, v in delta.items() if k != "upstream_requests"}
        figures = {
            "seconds_until_all_answered": load.seconds,
            "seconds_over_upstream": load.seconds - self.shape.held_latency,
            "errors": sum(v for k, v in codes.items() if k != "OK"),
            "peak_rss_mb": peak_mb,
            "idle_rss_mb": idle_mb,
            "mb_per_held_call": (peak_mb - idle_mb) / n,
            "cpu_seconds": cpu,
            "p50_ms": load.percentile(0.5),
        }
        return figures, codes

    # --- row 5 ---

    async def identical(self, gateway: GatewayProcess, seed_base: int) -> None:
        n = self.shape.identical
        await self.emulator.set_latency(1.0 if n >= 1000 else 0.3)
        runs: list[dict[str, float]] = []
        try:
            for i in range(self.shape.runs):
                request = generation_pb2.GenerationRequest(
                    prompt="bench identical", seed=seed_base + i, num_outputs=1
                )
                body = self.body(f"identical{i}.bin", grpc_frame(request.SerializeToString()))
                upstream = await self.emulator.generation_count()
                load, delta, _ = await self.checked(
                    gateway,
                    lambda body=body: h2load.closed(
                        self.url(gateway.target), body, streams=n, requests=n
                    ),
                )
                runs.append(
                    {
                        "upstream_requests": await self.emulator.generation_count() - upstream,
                        "gateway_upstream_requests": delta.get("upstream_requests", 0),
                        "seconds_until_all_answered": load.seconds,
                    }
                )
        finally:
            await self.emulator.set_latency(0.0)
        self.results["5_identical_seeded"] = {
            "calls": n,
            "upstream_requests_max": max(r["upstream_requests"] for r in runs),
            **_medians(runs),
        }

    # --- row 6 ---

    async def cold_starts(self, response_file: Path) -> None:
        # As shipped: the image's packages carry their bytecode (pip compiles them at
        # install); an editable checkout run with PYTHONDONTWRITEBYTECODE=1 would compile
        # every module at every start (~80 ms of the gateway's).
        for package in ("gateway", "emulator", "bench"):
            compileall.compile_dir(ROOT / package, quiet=1)
        bare_s, floor_s, gateway_s = [], [], []
        for i in range(self.shape.cold_starts):
            bare = BareServer(response_file, self.tmp / f"bare-cold{i}.log")
            try:
                bare_s.append(await bare.start())
            finally:
                bare.stop()
            assert self._floor_files is not None
            floor = FloorServer.forwarding(
                self.emulator.url, *self._floor_files, self.tmp / f"floor-cold{i}.log"
            )
            try:
                floor_s.append(await floor.start())
            finally:
                floor.stop()
            gateway = GatewayProcess(self.emulator.url, self.tmp / f"gateway-cold{i}.log", self.env)
            try:
                gateway_s.append(await gateway.start())
            finally:
                gateway.stop()
        self.results["6_cold_start"] = {
            "bare_ms": median(bare_s) * 1000,
            "floor_ms": median(floor_s) * 1000,
            "floor_ratio": median(floor_s) / median(bare_s),
            "gateway_ms": median(gateway_s) * 1000,
            "ratio": median(gateway_s) / median(bare_s),
        }

    # --- the suite ---

    async def run(self, phases: set[str]) -> dict[str, Any]:
        await self.emulator.start()
        seeded = generation_pb2.GenerationRequest(prompt="bench hit", seed=1, num_outputs=1)
        miss = generation_pb2.GenerationRequest(prompt="bench miss", num_outputs=1)
        try:
            gateway = await self.gateway()
        except BaseException:  # a gateway that never came up was killed by its start
            self.emulator.kill()
            raise
        bare: BareServer | None = None
        try:
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = generation_pb2_grpc.GenerationServiceStub(channel)
                await stub.CreateGeneration(seeded)  # fill the cache
                response = await stub.CreateGeneration(seeded)  # the hit h2load will get
            assert response.cache_result == generation_pb2.CacheResult.CACHE_RESULT_HIT
            response_file = self.body("response.bin", response.SerializeToString())
            hit_body = self.body("hit.bin", grpc_frame(seeded.SerializeToString()))
            miss_body = self.body("miss.bin", grpc_frame(miss.SerializeToString()))
            rest_body = self.body("miss.json", json.dumps(request_to_json(miss)).encode())
            self.results["response_bytes"] = len(response.SerializeToString())
            self._floor_files = (rest_body, response_file)

            if "hits" in phases:
                bare = BareServer(response_file, self.tmp / "bare.log")
                await bare.start()
                request_file = self.body("hit-request.bin", seeded.SerializeToString())
                floor_hits = FloorServer.hits(
                    request_file, response_file, self.tmp / "floor-hits.log"
                )
                await floor_hits.start()
                try:
                    await self.hits(gateway, bare, floor_hits, hit_body)
                finally:
                    floor_hits.stop()
                bare.stop()
            if "misses" in phases:
                await self.misses(gateway, miss_body, rest_body)
            if "identical" in phases:
                await self.identical(gateway, seed_base=int(time.time()))
            gateway.stop()
            if "held" in phases:
                await self.held_open(miss_body)
            if "cold" in phases:
                await self.cold_starts(response_file)
        finally:
            gateway.kill()
            if bare is not None:
                bare.kill()
            self.emulator.kill()
        return self.results


def _throughput(load: Load, cpu: float) -> dict[str, float]:
    return {
        "calls_per_second": load.rate,
        "p50_ms": load.percentile(0.5),
        "p99_ms": load.percentile(0.99),
        "cpu_us_per_call": cpu / load.done * 1e6 if load.done else float("nan"),
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([run[key] for run in runs]) for key in runs[0]}


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def method(shape: Shape) -> dict[str, Any]:
    return {
        "load_generator": "h2load (nghttp2-client), gRPC length-prefixed body",
        "runs": shape.runs,
        "aggregate": "median of runs; baseline and gateway interleaved within each run",
        "rows_1_2": f"closed loop, 1 connection x 16 streams, {shape.seconds:g} s each",
        "row_3": (
            f"saturation: closed loop 8 connections x 2 streams (gateway), 16 HTTP/1.1 "
            "connections (direct); "
            f"then open loop at the same rate for both, {shape.seconds:g} s each, over 8 "
            "staggered h2load clients of 1 connection each (HTTP/2 to the gateway, HTTP/1.1 "
            "to the REST endpoint)"
        ),
        "row_4": f"{shape.held} calls at once over {max(1, shape.held // 1000)} connections, "
        f"upstream {shape.held_latency:g} s, a fresh gateway per run",
        "row_5": f"{shape.identical} identical seeded calls on 1 connection, a new seed per run",
        "row_6": "spawn to the 'serving' log line (health SERVING) with bytecode compiled, "
        f"bare, floor, then gateway, {shape.cold_starts} rounds",
        "floor": "bench.floor: for hits, grpc.aio answering from a dict with a hit's least "
        "duties; otherwise grpc.aio forwarding each call with aiohttp and nothing else",
    }


# Each target: its name, the gateway's figure, the comparison, the goal, and the floor's
# figure for the same target where the floor measures one (Method): a target the floor
# misses in a run is out of the stack's reach in that run.
TARGETS = (
    ("2 hit throughput / bare", lambda r: r["2_cache_hit"]["ratio"], ">=", 0.75, lambda r: r["2_floor_hit"]["ratio"]),
    ("3 added p50 at 50% (ms)", lambda r: r["3_miss_added_latency"]["load_50"]["added_p50_ms"], "<=", 1.0, lambda r: r["3_miss_added_latency"]["load_50"]["floor_added_p50_ms"]),
    ("3 added p99 at 50% (ms)", lambda r: r["3_miss_added_latency"]["load_50"]["added_p99_ms"], "<=", 3.0, lambda r: r["3_miss_added_latency"]["load_50"]["floor_added_p99_ms"]),
    ("4 errors", lambda r: r["4_held_open"]["errors"], "<=", 0, None),
    ("4 s over the upstream", lambda r: r["4_held_open"]["seconds_over_upstream"], "<=", 3.0, lambda r: r["4_held_open"]["floor"]["seconds_over_upstream"]),
    ("4 peak RSS (MB)", lambda r: r["4_held_open"]["peak_rss_mb"], "<=", 300, lambda r: r["4_held_open"]["floor"]["peak_rss_mb"]),
    ("5 upstream requests", lambda r: r["5_identical_seeded"]["upstream_requests_max"], "<=", 1, None),
    ("6 cold start / bare", lambda r: r["6_cold_start"]["ratio"], "<=", 2.0, lambda r: r["6_cold_start"]["floor_ratio"]),
)  # fmt: skip


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target the run measured: the gateway's figure and the floor's, and whether
    each meets the goal."""
    found = []
    for name, get, op, goal, floor_get in TARGETS:
        try:
            value = get(results)
        except KeyError:
            continue
        verdict: dict[str, Any] = {
            "target": name,
            "goal": f"{op} {goal}",
            "measured": value,
            "met": _meets(value, op, goal),
        }
        try:
            floor = floor_get(results) if floor_get else None
        except KeyError:
            floor = None
        if floor is not None:
            verdict["floor"] = floor
            verdict["floor_met"] = _meets(floor, op, goal)
        found.append(verdict)
    return found


def _meets(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def table(results: dict[str, Any]) -> str:
    r = results
    lines = [
        "| row | baseline (same run) | gateway | ratio / added |",
        "|---|---|---|---|",
    ]
    if "2_cache_hit" in r:
        lines += _hit_lines(r["1_bare_server"], r["2_cache_hit"], r.get("2_floor_hit"))
    if "3_miss_added_latency" in r:
        lines += _miss_lines(r["3_miss_added_latency"])
    if "4_held_open" in r:
        lines += _held_lines(r["4_held_open"])
    if "5_identical_seeded" in r:
        lines += _identical_lines(r["5_identical_seeded"])
    if "6_cold_start" in r:
        lines += _cold_lines(r["6_cold_start"])
    lines += [
        "",
        "| target | measured | goal | met | the floor, same run |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts(r):
        floor = (
            f"{v['floor']:.2f}, "
            + ("met" if v["floor_met"] else "missed: out of the stack's reach in this run")
            if "floor" in v
            else "—"
        )
        lines.append(
            f"| {v['target']} | {v['measured']:.2f} | {v['goal']} | "
            f"{'yes' if v['met'] else 'NO'} | {floor} |"
        )
    return "\n".join(lines)


def _hit_lines(
    one: dict[str, Any], two: dict[str, Any], floor: dict[str, Any] | None = None
) -> list[str]:
    at_floor = (
        f"; floor {floor['calls_per_second']:,.0f}/s (x{floor['ratio']:.2f}), "
        f"{floor['cpu_us_per_call']:.0f} us CPU/call"
        if floor
        else ""
    )
    return [
        f"| 1-2 cache hit, 1 conn x 16 streams | bare grpc.aio {one['calls_per_second']:,.0f}/s, "
        f"p50 {one['p50_ms']:.2f} ms, {one['cpu_us_per_call']:.0f} us CPU/call{at_floor} | "
        f"{two['calls_per_second']:,.0f}/s, p50 {two['p50_ms']:.2f} ms, "
        f"{two['cpu_us_per_call']:.0f} us CPU/call | x{two['ratio']:.2f} |",
    ]


def _miss_lines(three: dict[str, Any]) -> list[str]:
    lines = [
        f"| 3 miss saturation | REST direct {three['direct_saturating_calls_per_second']:,.0f}/s; "
        f"floor {three['floor_saturating_calls_per_second']:,.0f}/s | "
        f"{three['saturating_calls_per_second']:,.0f}/s | x{three['saturation_ratio']:.2f} |",
    ]
    for load in ("load_25", "load_50", "load_90"):
        x = three[load]
        lines.append(
            f"| 3 miss at {load[5:]}% ({x['rate']:,.0f}/s open loop) | REST direct p50 "
            f"{x['direct_p50_ms']:.2f} ms, p99 {x['direct_p99_ms']:.2f} ms; floor adds "
            f"+{x['floor_added_p50_ms']:.2f} / +{x['floor_added_p99_ms']:.2f} ms | p50 "
            f"{x['gateway_p50_ms']:.2f} ms, p99 {x['gateway_p99_ms']:.2f} ms | "
            f"+{x['added_p50_ms']:.2f} ms p50, +{x['added_p99_ms']:.2f} ms p99 |"
        )
    return lines


def _held_lines(four: dict[str, Any]) -> list[str]:
    floor = four["floor"]
    return [
        f"| 4 {four['calls']:,} at once, upstream {four['upstream_seconds']:g} s | upstream "
        f"{four['upstream_seconds']:g} s; floor: all answered in "
        f"{floor['seconds_until_all_answered']:.2f} s, peak RSS {floor['peak_rss_mb']:.0f} MB, "
        f"CPU {floor['cpu_seconds']:.1f} s | all answered in {four['seconds_until_all_answered']:.2f} s, "
        f"{four['errors']:.0f} errors {four['codes_last_run']}, peak RSS {four['peak_rss_mb']:.0f} MB "
        f"({four['mb_per_held_call'] * 1024:.1f} KB/call), CPU {four['gateway_cpu_seconds']:.1f} s "
        f"(emulator {four['emulator_cpu_seconds']:.1f} s) | "
        f"+{four['seconds_over_upstream']:.2f} s |",
    ]


def _identical_lines(five: dict[str, Any]) -> list[str]:
    return [
        f"| 5 {five['calls']:,} identical seeded | 1 upstream request | "
        f"{five['upstream_requests_max']:.0f} upstream request(s), all answered in "
        f"{five['seconds_until_all_answered']:.2f} s | |",
    ]


def _cold_lines(six: dict[str, Any]) -> list[str]:
    return [
        f"| 6 cold start to SERVING | bare {six['bare_ms']:.0f} ms; floor {six['floor_ms']:.0f} "
        f"ms (x{six['floor_ratio']:.2f}) | {six['gateway_ms']:.0f} ms | x{six['ratio']:.2f} |",
    ]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke version: tiny, one run")
    parser.add_argument("--runs", type=int, help="runs per figure (median); default 3")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--rows",
        default=",".join(PHASES),
        help=f"phases to run, comma-separated (default all: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the gateway (to measure a setting; the default "
        "is the gateway as shipped)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="run the gateway on uvloop (to measure it)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on the last CPU, h2load and the bench on the others: steadier "
        "A/B figures (the shipped rows let the kernel place them)",
    )
    args = parser.parse_args()
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            print("--pin needs at least 2 CPUs", file=sys.stderr)
            return 2
        processes.SERVER_CPUS.update(cpus[-1:])
        os.sched_setaffinity(0, set(cpus[:-1]))
    env = dict(item.split("=", 1) for item in args.gateway_env)
    shape = QUICK if args.quick else FULL
    if args.runs:
        shape = Shape(**{**shape.__dict__, "runs": args.runs})
    if h2load.H2LOAD is None:
        print("h2load is not installed: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = await Bench(Path(tmp), shape, env, args.uvloop).run(set(args.rows.split(",")))
    document = {
        "machine": machine(),
        "method": method(shape),
        "gateway_env": env,
        "uvloop": args.uvloop,
        "pinned": args.pin,
        "results": results,
        "targets": verdicts(results),
        "wall_seconds": time.perf_counter() - started,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(table(results))
    print(f"\n{document['wall_seconds']:.0f} s; JSON in {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
