"""Signals on a gateway process with paid generations in flight: a grace period that runs
out and a second stop signal cut calls with the "may have been charged" error (never a
retry-inviting code); SIGHUP changes nothing."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import grpc

from emulator.server import Emulator
from tests.fixtures import CREATE, Stub, request_with, upstream_calls
from tests.processes import GatewayProcess
from tests.status import rich_error

request = request_with(num_outputs=1)


async def calls_in_flight(
    gateway: GatewayProcess, emulator: Emulator, stub: Stub, count: int
) -> list[asyncio.Future[object]]:
    calls: list[asyncio.Future[object]] = [
        asyncio.ensure_future(stub.CreateGeneration(request(prompt=f"paid {i}"), timeout=60))
        for i in range(count)
    ]
    await emulator.wait_for_requests(CREATE, count)  # each has reached the upstream
    return calls


def abandoned_line(gateway: GatewayProcess) -> dict[str, object]:
    lines = [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]
    (found,) = [line for line in lines if "abandoned_calls" in line]
    return found


async def assert_told_may_have_been_charged(calls: list[asyncio.Future[object]]) -> None:
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes), outcomes
    errors = [rich_error(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert {e.code for e in errors} == {grpc.StatusCode.INTERNAL}  # not retried by clients
    assert all(e.info is not None and e.info.reason == "GENERATION_ABANDONED" for e in errors)
    assert all("may have been charged" in e.message for e in errors)


async def test_calls_cut_when_the_grace_period_ends_are_told_they_may_have_been_charged(
    spawn: Callable[..., GatewayProcess], emulator: Emulator
) -> None:
    emulator.set_latency(30.0)
    gateway = spawn(GATEWAY_GRACE_PERIOD="1")
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        calls = await calls_in_flight(gateway, emulator, Stub(channel), 20)
        gateway.terminate()
        await assert_told_may_have_been_charged(calls)
    assert await gateway.wait(timeout=20) == 0
    line = abandoned_line(gateway)
    assert line["abandoned_calls"] == 20
    assert "grace period over" in str(line["message"])
    assert upstream_calls(emulator) == 20


async def test_a_second_stop_signal_stops_at_once_and_says_what_it_cut(
    spawn: Callable[..., GatewayProcess], emulator: Emulator
) -> None:
    emulator.set_latency(30.0)
    gateway = spawn(GATEWAY_GRACE_PERIOD="300")
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        calls = await calls_in_flight(gateway, emulator, Stub(channel), 10)
        gateway.terminate()
        await gateway.wait_for_log("draining")
        gateway.terminate()  # the operator is not waiting 300 s
        await assert_told_may_have_been_charged(calls)
    assert await gateway.wait(timeout=20) == 0
    line = abandoned_line(gateway)
    assert line["abandoned_calls"] == 10
    assert "second stop signal" in str(line["message"])


async def test_sighup_leaves_calls_in_flight_finishing(
    spawn: Callable[..., GatewayProcess], emulator: Emulator
) -> None:
    emulator.set_latency(1.0)
    gateway = spawn()
    await gateway.start()
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = Stub(channel)
        calls = await calls_in_flight(gateway, emulator, stub, 20)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        await gateway.wait_for_log("SIGHUP ignored")
        responses = await asyncio.gather(*calls)
        assert all(len(r.outputs) == 1 for r in responses)  # type: ignore[attr-defined]
        again = await stub.CreateGeneration(request(prompt="after the hangup"), timeout=30)
        assert len(again.outputs) == 1
    assert gateway.process.poll() is None
