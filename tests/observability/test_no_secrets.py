"""The API key never leaves in logs or metrics: every log line and the whole /metrics output
of a run (successes, errors, invalid requests) are searched for the key and its SHA-256."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator

import grpc
import httpx
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.app import GatewayApp
from gateway.logs import JsonFormatter, redact
from tests.conftest import ACCOUNT_KEY, OTHER_KEY, GatewayFactory
from tests.observability.workload import run_workload

UNKNOWN_KEY = "sc-" + hashlib.sha256(b"a key the upstream does not know").hexdigest()


def forms(key: str) -> list[str]:
    """The key as it might leak: itself, without its prefix, and its SHA-256 digest."""
    return [key, key.removeprefix("sc-"), hashlib.sha256(key.encode()).hexdigest()]


class Capture(logging.Handler):
    """Every record of the gateway's loggers, kept raw and as the JSON lines it prints."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines = io.StringIO()
        self.raw: list[str] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("emulator", "aiohttp.access")):
            return  # the fake upstream's own logs, not the gateway's
        self.lines.write(self.formatter_.format(record) + "\n")
        self.raw.append(record.getMessage() + repr(vars(record)))


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def scrape(app: GatewayApp) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")
    answer.raise_for_status()
    return answer.text


async def test_keys_appear_in_no_log_line_and_no_metric(
    make_gateway: GatewayFactory, emulator: Emulator, captured: Capture
) -> None:
    # A configured key, through the whole mixed workload.
    configured = await make_gateway(caller="secrets")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{configured.grpc_port}") as channel:
        ledger = await run_workload(channel, emulator, default_caller="secrets")
    assert {o.code for o in ledger.outcomes} > {grpc.StatusCode.OK}

    # Callers' own keys: a good one, one the upstream rejects, one with an error fault.
    forwarding = await make_gateway(api_key=None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{forwarding.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = generation_pb2.GenerationRequest(prompt="keys stay secret", num_outputs=1)
        await stub.CreateGeneration(request, metadata=(("authorization", f"Bearer {OTHER_KEY}"),))
        for key in (UNKNOWN_KEY, OTHER_KEY):
            emulator.faults.inject("internal_error")
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreateGeneration(request, metadata=(("authorization", f"Bearer {key}"),))

    lines = captured.lines.getvalue()
    raw = "\n".join(captured.raw)
    metrics = await scrape(configured) + await scrape(forwarding)
    assert '"logger":"gateway.access"' in lines and "stablecog_credits_remaining{" in metrics
    for key in (ACCOUNT_KEY, OTHER_KEY, UNKNOWN_KEY):
        for form in forms(key):
            assert form not in lines, "a key leaked into the logs"
            # Not even before redaction: the last line of defence was not needed.
            assert form not in raw, "a key reached a log record"
            assert form not in metrics, "a key leaked into /metrics"


def test_redaction_is_the_last_line_of_defence() -> None:
    record = logging.LogRecord(
        "gateway.x", logging.INFO, __file__, 1, "key %s", (ACCOUNT_KEY,), None
    )
    record.authorization = f"Bearer {OTHER_KEY}"
    line = JsonFormatter().format(record)
    assert ACCOUNT_KEY not in line and OTHER_KEY not in line
    assert "[REDACTED]" in line
    assert (
        redact("a prompt about sc-fi and disc-jockeys") == "a prompt about sc-fi and disc-jockeys"
    )
