"""The fault-injection suite: every row of tests/faults/rows.py, end to end, through real
gateways (realistic retries; one with a short upstream timeout, one aimed at a port that
refuses connections) against the real emulator, each checked against the emulator's
request records and credit ledger. Afterwards nothing is in flight (the gauge on /metrics
is 0) and no task or upstream connection is left. The table it observes is the one in
RELIABILITY.md ("Fault-injection results"); the test fails if they differ.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from emulator.server import Emulator
from gateway.app import GatewayApp, Seams
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.faults.rows import (
    GATEWAY,
    OUTPUTS,
    REFUSED,
    ROWS,
    SHORT,
    SHORT_TIMEOUT_SECONDS,
    Row,
)
from tests.fixtures import Stub, eventually, request, upstream_calls
from tests.services import refusing_port
from tests.status import rich_error

RELIABILITY = Path(__file__).resolve().parents[2] / "RELIABILITY.md"
MAY_HAVE_BEEN_CHARGED = "may have been charged"


class SkippedWaits:
    """A gateway Clock on real time whose short sleeps (retry backoff, `Retry-After`) pass
    at once, moving its time on by what was skipped, so the rows take milliseconds; longer
    sleeps (the reachability watch's 30 s) are real. `waits` lists the skipped ones."""

    MAX_SKIPPED_SECONDS = 10.0

    def __init__(self) -> None:
        self.skipped = 0.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    def wall(self) -> float:
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:
        if seconds > self.MAX_SKIPPED_SECONDS:
            await asyncio.sleep(seconds)
            return
        self.waits.append(seconds)
        self.skipped += max(seconds, 0.0)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Observed:
    """What one row produced, in the row's own terms."""

    code: grpc.StatusCode
    reason: str | None
    domain: str
    retry_info: bool
    may_have_been_charged: bool
    requests: int
    generations: int
    charged: int
    outputs: int | None
    attempts: int


def expected(row: Row) -> Observed:
    return Observed(
        code=row.code,
        reason=row.reason,
        domain=row.domain,
        retry_info=row.retry_info,
        may_have_been_charged=row.may_have_been_charged,
        requests=row.requests,
        generations=row.generations,
        charged=row.charged,
        outputs=row.outputs,
        attempts=row.attempts,
    )


@pytest.fixture
def refused_port() -> Iterator[int]:
    with refusing_port() as port:
        yield port


@dataclass
class Gateways:
    apps: dict[str, GatewayApp]
    channels: dict[str, grpc.aio.Channel]
    clock: SkippedWaits

    @property
    def stubs(self) -> dict[str, Stub]:
        return {name: Stub(channel) for name, channel in self.channels.items()}


@pytest.fixture
async def gateways(make_gateway: GatewayFactory, refused_port: int) -> AsyncIterator[Gateways]:
    clock = SkippedWaits()
    seams = Seams(clock=clock)
    # Realistic retries (the defaults: 3 tries, refunded failures retried). No circuit
    # breaker: its run of failures would turn later rows into UPSTREAM_CIRCUIT_OPEN, which
    # tests/gateway/test_circuit.py covers. Unseeded calls, so the cache takes no part.
    common = {"upstream_retries": 3, "retry_refunded": True, "circuit_failures": 0}
    apps = {
        GATEWAY: await make_gateway(seams, **common),
        SHORT: await make_gateway(seams, upstream_timeout=SHORT_TIMEOUT_SECONDS, **common),
        REFUSED: await make_gateway(
            seams, upstream_url=f"http://127.0.0.1:{refused_port}", **common
        ),
    }
    channels = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") for name, app in apps.items()
    }
    try:
        yield Gateways(apps, channels, clock)
    finally:
        for channel in channels.values():
            await channel.close()


def retries_counted(app: GatewayApp) -> float:
    return sum(
        sample.value
        for family in app.registry.collect()
        if family.name == "stablecog_upstream_retries"
        for sample in family.samples
        if sample.name == "stablecog_upstream_retries_total"
    )


async def scraped_in_flight(app: GatewayApp) -> float:
    """stablecog_inflight_requests as /metrics serves it."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "stablecog_inflight_requests":
                return sample.value
    raise AssertionError("stablecog_inflight_requests is not on /metrics")


def open_tasks() -> Counter[str]:
    """The loop's unfinished tasks (but this one), by coroutine name."""
    current = asyncio.current_task()
    return Counter(
        getattr(task.get_coro(), "__qualname__", repr(task.get_coro()))
        for task in asyncio.all_tasks()
        if task is not current and not task.done()
    )


async def settled(emulator: Emulator) -> None:
    """Every generation the emulator started has finished (charged or refunded) and every
    request it received has been answered or dropped."""
    await eventually(
        lambda: (
            emulator.running_generations == 0
            and all(r.completed_at is not None for r in emulator.requests)
        )
    )


async def run_row(row: Row, gw: Gateways, emulator: Emulator) -> Observed:
    app = gw.apps[row.gateway]
    requests_before = upstream_calls(emulator)
    generations_before = emulator.generation_count
    balance_before = emulator.balance(ACCOUNT_KEY)
    retries_before = retries_counted(app)
    waits_before = len(gw.clock.waits)
    for fault in row.faults:
        emulator.faults.inject(fault.mode, count=fault.count, **fault.params)
    code, reason, domain, retry_info, charged_words, outputs = (
        grpc.StatusCode.OK,
        None,
        "stablecog-gateway",
        False,
        False,
        None,
    )
    try:
        response = await gw.stubs[row.gateway].CreateGeneration(
            request(num_outputs=OUTPUTS), timeout=30
        )
        outputs = len(response.outputs)
    except grpc.aio.AioRpcError as failure:
        error = rich_error(failure)
        assert error.info is not None, f"{row.name}: no ErrorInfo ({error.message})"
        code, reason, domain = error.code, error.info.reason, error.info.domain
        retry_info = error.retry_delay is not None
        charged_words = MAY_HAVE_BEEN_CHARGED in error.message
    await settled(emulator)
    assert emulator.faults.pending() == [], f"{row.name}: faults left unused"
    retries = retries_counted(app) - retries_before
    waits = len(gw.clock.waits) - waits_before
    assert retries == waits, f"{row.name}: {retries} retries counted, {waits} backoff waits"
    return Observed(
        code=code,
        reason=reason,
        domain=domain,
        retry_info=retry_info,
        may_have_been_charged=charged_words,
        requests=upstream_calls(emulator) - requests_before,
        generations=emulator.generation_count - generations_before,
        charged=balance_before - emulator.balance(ACCOUNT_KEY),
        outputs=outputs,
        attempts=int(retries) + 1,
    )


def table(results: list[tuple[Row, Observed]]) -> str:
    """The results as RELIABILITY.md shows them."""
    lines = [
        "| fault | emulator switch | gRPC code | reason (domain) | RetryInfo "
        '| "may have been charged" | tries | upstream requests | generations '
        "| credits charged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, seen in results:
        switch = " + ".join(f.label() for f in row.faults) or f"({row.gateway} gateway)"
        code = seen.code.name + (f", {seen.outputs} images" if seen.outputs is not None else "")
        reason = "—" if seen.reason is None else f"`{seen.reason}`"
        if seen.reason is not None and seen.domain != "stablecog-gateway":
            reason += f" ({seen.domain})"
        lines.append(
            f"| {row.name} | `{switch}` | {code} | {reason} "
            f"| {'yes' if seen.retry_info else 'no'} "
            f"| {'yes' if seen.may_have_been_charged else 'no'} | {seen.attempts} "
            f"| {seen.requests} | {seen.generations} | {seen.charged} |"
        )
    return "\n".join(lines) + "\n"


async def test_every_fault_row_end_to_end_with_the_ledger(
    gateways: Gateways, emulator: Emulator
) -> None:
    for channel in gateways.channels.values():
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    # Warm up what stays open between calls (channels, one pooled upstream connection
    # per gateway that reaches the emulator), then take the baseline.
    for name in (GATEWAY, SHORT):
        await gateways.stubs[name].CreateGeneration(request(num_outputs=1))
    await settled(emulator)
    tasks_before = open_tasks()
    connections_before = emulator.open_connections  # the pooled ones and the probes'

    results = [(row, await run_row(row, gateways, emulator)) for row in ROWS]

    wrong = [
        f"{row.name}: "
        + ", ".join(
            f"{f.name} {getattr(seen, f.name)!r} (expected {getattr(expected(row), f.name)!r})"
            for f in fields(Observed)
            if getattr(seen, f.name) != getattr(expected(row), f.name)
        )
        for row, seen in results
        if seen != expected(row)
    ]
    observed = table(results)
    if os.environ.get("FAULTS_TABLE"):
        await asyncio.to_thread(Path(os.environ["FAULTS_TABLE"]).write_text, observed)
    assert not wrong, "\n".join(wrong)
    # Money: no call was charged more than once (OUTPUTS credits per charge).
    assert all(seen.charged in (0, OUTPUTS) for _, seen in results), [asdict(s) for _, s in results]

    # Nothing in flight, on the gauge and in the call runner.
    for app in gateways.apps.values():
        assert await scraped_in_flight(app) == 0
        assert app.runner.in_flight.count == 0
    # No task left behind: the loop holds no more unfinished tasks of any kind than before.
    await eventually(lambda: not open_tasks() - tasks_before)
    # No upstream connection leaked: at most the pooled idle ones are still open, and
    # they all close once the gateways stop.
    assert emulator.open_connections <= connections_before
    for app in gateways.apps.values():
        await app.stop(grace=1.0)
    await eventually(lambda: emulator.open_connections == 0)

    assert observed in await asyncio.to_thread(RELIABILITY.read_text), (
        "RELIABILITY.md's fault-injection table is not what the suite observed; "
        "regenerate it with FAULTS_TABLE=/tmp/faults.md pytest tests/faults and paste it"
    )
