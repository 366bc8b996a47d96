"""Idempotency keys across two gateway processes sharing a real Redis, and secret hygiene:
neither the API key nor a raw idempotency key reaches Redis, the log or /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import httpx
import pytest
import redis

from emulator.server import Emulator
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS
from tests.fixtures import CREATE, Stub, call_trailers, request_with, upstream_calls
from tests.processes import GatewayProcess, json_entry
from tests.services import RedisServer
from tests.status import rich_error

request = request_with(num_outputs=2)
IDEMPOTENCY_KEY = "order-7f3c9a41-5e2b-4d8e-9b61-secret-ish"


async def metrics_text(gateway: GatewayProcess) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    answer.raise_for_status()
    return answer.text


def redis_dump(server: RedisServer) -> list[bytes]:
    client = redis.Redis(unix_socket_path=str(server.socket_path))
    try:
        found: list[bytes] = []
        for key in client.scan_iter(count=1000):
            found.append(key)
            if client.type(key) == b"string":
                found.append(client.get(key) or b"")
        return found
    finally:
        client.close()


async def test_a_repeat_on_another_gateway_waits_for_the_first_and_replays_it(
    spawn: Callable[..., GatewayProcess], emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_latency(1.0)
    env = {"GATEWAY_CACHE": "redis", "GATEWAY_REDIS_URL": redis_server.url}
    first_gateway, second_gateway = spawn(**env), spawn(**env)
    await asyncio.gather(first_gateway.start(), second_gateway.start())
    async with (
        grpc.aio.insecure_channel(first_gateway.target) as one,
        grpc.aio.insecure_channel(second_gateway.target) as two,
    ):
        metadata = [("idempotency-key", IDEMPOTENCY_KEY)]
        first = asyncio.ensure_future(
            call_trailers(Stub(one), request(), metadata=metadata, timeout=30)
        )
        await emulator.wait_for_requests(CREATE, 1)  # the first call is generating
        waiting, waiting_trailers = await call_trailers(
            Stub(two), request(), metadata=metadata, timeout=30
        )
        made, made_trailers = await first
        later, later_trailers = await call_trailers(
            Stub(two), request(), metadata=metadata, timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await Stub(one).CreateGeneration(request(num_outputs=1), metadata=metadata, timeout=30)
    assert upstream_calls(emulator) == 1
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2
    assert "x-idempotent-replay" not in made_trailers
    assert waiting_trailers["x-idempotent-replay"] == later_trailers["x-idempotent-replay"]
    assert waiting_trailers["x-idempotent-replay"] == "true"
    assert list(waiting.outputs) == list(made.outputs) == list(later.outputs)
    error = rich_error(reused.value)
    assert error.info is not None and error.info.reason == "IDEMPOTENCY_KEY_REUSED"

    # Hygiene: the secrets appear nowhere in the clear.
    stored = redis_dump(redis_server)
    idempotency_keys = [k for k in stored if b":idem:" in k and not k.endswith(b":lease")]
    assert len(idempotency_keys) == 1 and b"{" in idempotency_keys[0]  # one slot per record
    texts = [
        b"\n".join(stored).decode(errors="replace"),
        first_gateway.logs(),
        second_gateway.logs(),
        await metrics_text(first_gateway),
        await metrics_text(second_gateway),
    ]
    for text in texts:
        assert IDEMPOTENCY_KEY not in text
        assert ACCOUNT_KEY not in text and ACCOUNT_KEY.removeprefix("sc-") not in text
    access = [json_entry(line, "call") for line in second_gateway.logs().splitlines()]
    results = [(e["cache_result"], e["credits_spent"]) for e in access if e is not None]
    assert results == [("replayed", 0), ("replayed", 0)]
    for gateway in (first_gateway, second_gateway):
        gateway.terminate()
        assert await gateway.wait(timeout=15) == 0
