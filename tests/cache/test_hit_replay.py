"""Replayed hits (gateway.call_runner's `Replay`, gateway.servicer's `_replay`): a call
identical to one served as a hit is answered again without its pipeline, and recorded
exactly as the full path records a hit. Each test runs a real gateway with the in-process
cache against the emulator, and counts the calls that ran the full path by wrapping the
runner's `run` (the replay is tried before it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from emulator.server import Emulator
from gateway import logs
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import GatewayApp, Seams
from gateway.identity import token_digest
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, OTHER_KEY, FakeClock, GatewayFactory
from tests.fixtures import call, call_trailers, request_with, upstream_calls
from tests.services import RedisServer

request = request_with(num_outputs=2)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# Samples that differ between two calls by their latency alone.
_BY_LATENCY = ("grpc_server_handling_seconds_bucket", "grpc_server_handling_seconds_sum")


def full_runs(app: GatewayApp) -> list[str]:
    """The methods of the calls that ran the full path from now on."""
    ran: list[str] = []
    run = app.runner.run

    async def counted(started: Any, *args: Any, **kwargs: Any) -> Any:
        ran.append(started.method)
        return await run(started, *args, **kwargs)

    app.runner.run = counted  # type: ignore[method-assign]
    return ran


def samples(app: GatewayApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in app.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created") and not s.name.startswith(("process_", "python_"))
    }


def delta(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        key: value - before.get(key, 0.0)
        for key, value in after.items()
        if value != before.get(key, 0.0) and key[0] not in _BY_LATENCY
    }


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in vars(r).items() if k not in _STANDARD}
        for r in caplog.records
        if r.name == "gateway.access"
    ]


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> GatewayApp:
    return await make_gateway(cache="memory")


async def test_a_replayed_hit_is_answered_and_recorded_as_a_full_hit(
    gateway: GatewayApp, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    ran = full_runs(gateway)
    await call(gateway, request(seed=4))  # miss
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        before = samples(gateway)
        full, full_trailers = await call_trailers(gateway, request(seed=4))
        middle = samples(gateway)
        replayed, replayed_trailers = await call_trailers(gateway, request(seed=4))
        after = samples(gateway)
    assert ran == ["CreateGeneration", "CreateGeneration"]  # the third was replayed
    assert replayed.SerializeToString() == full.SerializeToString()
    assert replayed.cache_result == generation_pb2.CACHE_RESULT_HIT
    full_id, replayed_id = full_trailers.pop("x-request-id"), replayed_trailers.pop("x-request-id")
    assert full_id != replayed_id
    assert full_trailers == replayed_trailers == {"x-cache": "hit"}
    assert delta(before, middle) == delta(middle, after)
    assert (
        delta(middle, after)[
            (
                "grpc_server_handled_total",
                (
                    ("grpc_code", "OK"),
                    ("grpc_method", "CreateGeneration"),
                    ("grpc_service", "stablecog.v1.GenerationService"),
                    ("grpc_type", "unary"),
                ),
            )
        ]
        == 1
    )
    full_line, replayed_line = access_lines(caplog)
    for line in (full_line, replayed_line):
        assert line.pop("latency_seconds") >= 0
    assert (full_line.pop("request_id"), replayed_line.pop("request_id")) == (full_id, replayed_id)
    assert replayed_line == full_line
    assert full_line["cache_result"] == "hit" and full_line["credits_saved"] == 2
    assert upstream_calls(emulator) == 1


async def test_a_replayed_hit_echoes_the_callers_request_id(gateway: GatewayApp) -> None:
    ran = full_runs(gateway)
    for _ in range(2):
        await call(gateway, request(seed=5))
    _, trailers = await call_trailers(
        gateway, request(seed=5), metadata=[("x-request-id", "caller-chosen-7")]
    )
    _, again = await call_trailers(
        gateway, request(seed=5), metadata=[("x-request-id", "caller-chosen-7")]
    )
    assert trailers["x-request-id"] == again["x-request-id"] == "caller-chosen-7"
    assert len(ran) == 2  # the miss and the first hit: both calls with an id were replayed


async def test_a_call_offered_a_replay_derives_its_start_once(gateway: GatewayApp) -> None:
    """A start that is not remembered (its metadata names the call) is derived once, for
    the replay offer and the full path alike."""
    identify = gateway.runner._identify
    derived: list[str | None] = []

    class Counting:
        needs_auth_context = identify.needs_auth_context
        reads_only_metadata = identify.reads_only_metadata

        def __call__(self, metadata: Any, auth_context: Any) -> Any:
            derived.append(metadata.get("x-request-id"))
            return identify(metadata, auth_context)

    gateway.runner._identify = Counting()  # type: ignore[assignment]
    ran = full_runs(gateway)
    for i in range(3):  # a miss, then hits: each offered a replay first
        await call(gateway, request(seed=6), metadata=[("x-request-id", f"req-{i}")])
    assert derived == ["req-0", "req-1", "req-2"]
    assert len(ran) == 2  # the miss and the first hit ran in full; the third was replayed


async def test_replays_follow_the_cache_entry_and_its_ttl(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    clock = FakeClock()
    app = await make_gateway(Seams(clock=clock), cache="memory", cache_ttl=60)
    ran = full_runs(app)
    results = [(await call(app, request(seed=11)))[1] for _ in range(3)]
    assert len(ran) == 2  # the third was replayed
    clock.advance(61)
    _, after_expiry = await call(app, request(seed=11))
    assert [*results, after_expiry] == ["miss", "hit", "hit", "miss"]
    assert len(ran) == 3
    assert upstream_calls(emulator) == 2


async def test_replays_follow_the_caches_eviction(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(cache="memory", cache_max_entries=1)
    ran = full_runs(app)
    first = [(await call(app, request(seed=12)))[1] for _ in range(3)]
    _, other = await call(app, request(seed=13))  # stored: the only entry now
    _, evicted = await call(app, request(seed=12))
    assert first == ["miss", "hit", "hit"] and (other, evicted) == ("miss", "miss")
    assert len(ran) == 4  # all but the third
    assert upstream_calls(emulator) == 3


async def test_a_replayed_hit_reports_the_newest_balance(gateway: GatewayApp) -> None:
    ran = full_runs(gateway)
    for _ in range(3):
        await call(gateway, request(seed=1, num_outputs=1))
    assert len(ran) == 2
    spent, _ = await call(gateway, request(num_outputs=3))  # unseeded: paid
    hit, result = await call(gateway, request(seed=1, num_outputs=1))
    assert result == "hit"
    assert len(ran) == 3  # the paid call; the hit was replayed, with the new balance
    assert hit.remaining_credits == spent.remaining_credits == INITIAL_CREDITS - 4


async def test_a_request_too_large_to_replay_is_not_remembered(gateway: GatewayApp) -> None:
    long = request(seed=14, prompt="a lighthouse at dawn, " * 140)  # > 2,048 bytes
    ran = full_runs(gateway)
    results = [(await call(gateway, long))[1] for _ in range(3)]
    assert results == ["miss", "hit", "hit"]
    assert len(ran) == 3


async def test_a_failing_replay_falls_back_to_the_full_path(
    gateway: GatewayApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(2):
        await call(gateway, request(seed=15))
    assert gateway.cache is not None

    def broken(request_bytes: bytes, scope: str) -> None:
        raise RuntimeError(f"a bug near {ACCOUNT_KEY}")

    monkeypatch.setattr(gateway.cache, "replay_hit", broken)
    ran = full_runs(gateway)
    with caplog.at_level(logging.ERROR, logger="gateway.call_runner"):
        _, result = await call(
            gateway, request(seed=15), metadata=[("authorization", f"Bearer {ACCOUNT_KEY}")]
        )
    assert result == "hit" and len(ran) == 1
    [failure] = [r for r in caplog.records if r.name == "gateway.call_runner"]
    assert "runs in full" in failure.getMessage()
    assert ACCOUNT_KEY not in failure.traceback  # type: ignore[attr-defined]
    assert "a bug near" in failure.traceback  # type: ignore[attr-defined]


async def test_with_redis_hits_are_not_replayed(
    make_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    app = await make_gateway(cache="redis", redis_url=redis_server.url)
    ran = full_runs(app)
    results = [(await call(app, request(seed=16)))[1] for _ in range(3)]
    assert results == ["miss", "hit", "hit"]
    assert len(ran) == 3


async def test_an_unusable_request_id_is_replaced_on_a_replay(gateway: GatewayApp) -> None:
    for _ in range(2):
        await call(gateway, request(seed=17))
    ran = full_runs(gateway)
    _, trailers = await call_trailers(
        gateway, request(seed=17), metadata=[("x-request-id", f"id-{ACCOUNT_KEY}")]
    )
    assert ran == []
    assert ACCOUNT_KEY not in trailers["x-request-id"] and len(trailers["x-request-id"]) == 32


async def test_prompts_logged_on_a_replay_with_log_prompts(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_gateway(cache="memory", log_prompts=True, max_callers=1)
    await call(app, request(seed=19), metadata=[("x-caller", "the-one-admitted")])
    ran = full_runs(app)
    metadata = [("x-caller", "caller-past-the-bound")]
    await call(app, request(seed=18), metadata=metadata)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for _ in range(2):
            await call(app, request(seed=18), metadata=metadata)
    assert len(ran) == 2
    full_line, replayed_line = access_lines(caplog)
    for line in (full_line, replayed_line):
        line.pop("latency_seconds"), line.pop("request_id")
    assert replayed_line == full_line
    assert full_line["prompt"] == request(seed=18).prompt
    assert (full_line["caller"], full_line["caller_raw"]) == ("other", "caller-past-the-bound")


async def test_what_sets_a_call_apart_runs_it_in_full(
    gateway: GatewayApp, emulator: Emulator
) -> None:
    for _ in range(2):
        await call(gateway, request(seed=8))
    ran = full_runs(gateway)
    _, no_cache = await call(gateway, request(seed=8), metadata=[("cache-control", "no-cache")])
    _, keyed = await call(gateway, request(seed=8), metadata=[("idempotency-key", "k-8")])
    _, other_account = await call(
        gateway, request(seed=8), metadata=[("authorization", f"Bearer {OTHER_KEY}")]
    )
    assert (no_cache, keyed) == ("bypass", "hit")
    assert other_account == "hit"  # the configured key pays here, whatever is forwarded
    assert len(ran) == 2  # the bypass and the keyed call; the third was replayed
    gateway.runner.draining = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(gateway, request(seed=8))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    gateway.runner.draining = False
    assert upstream_calls(emulator) == 2  # the first call, and the one that bypassed


async def test_forwarded_keys_never_share_replays(
    make_gateway: GatewayFactory, emulator: Emulator
) -> None:
    app = await make_gateway(api_key=None, cache="memory")
    mine = [("authorization", f"Bearer {ACCOUNT_KEY}")]
    theirs = [("authorization", f"Bearer {OTHER_KEY}")]
    results = [(await call(app, request(seed=5), metadata=mine))[1] for _ in range(3)]
    _, theirs_first = await call(app, request(seed=5), metadata=theirs)
    assert results == ["miss", "hit", "hit"] and theirs_first == "miss"
    assert upstream_calls(emulator) == 2
    assert emulator.balance(OTHER_KEY) == INITIAL_CREDITS - 2


async def test_a_new_catalog_snapshot_checks_the_request_again(
    gateway: GatewayApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        await call(gateway, request(seed=9))
    ran = full_runs(gateway)
    current = gateway.catalog.snapshot()
    assert current is not None
    refreshed = generation_pb2.ListModelsResponse()
    refreshed.CopyFrom(current)  # what a refresh makes: a new snapshot
    # What the validator checks against (the cache's key defaults still the old ones).
    monkeypatch.setattr(gateway.servicer._validator, "_catalog", lambda: refreshed)
    results = [(await call(gateway, request(seed=9)))[1] for _ in range(2)]
    assert results == ["hit", "hit"]
    assert len(ran) == 1  # checked in full once under the new snapshot, then replayed
    # The snapshot the cache key's defaults come from.
    monkeypatch.setattr(gateway.catalog, "snapshot", lambda: refreshed)
    results = [(await call(gateway, request(seed=9)))[1] for _ in range(2)]
    assert results == ["hit", "hit"]
    assert len(ran) == 2


async def test_no_replay_past_the_call_cap(make_gateway: GatewayFactory) -> None:
    app = await make_gateway(cache="memory", max_concurrent_calls=1)
    for _ in range(2):
        await call(app, request(seed=3))
    ran = full_runs(app)
    await call(app, request(seed=3))
    assert ran == []
    held = object()
    app.runner.in_flight.tasks.add(held)  # type: ignore[arg-type]  # a call in flight
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(app, request(seed=3))
    finally:
        app.runner.in_flight.tasks.discard(held)  # type: ignore[arg-type]
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ran == ["CreateGeneration"]


async def test_a_replayed_hits_line_is_the_full_hits_line(
    gateway: GatewayApp, configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """As in the gateway's process: the writer's handler alone, so the full hit's line is
    formatted by `log_fields` and the replayed one's from its template."""
    await call(gateway, request(seed=20))
    ran = full_runs(gateway)
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[:] = [h for h in handlers if isinstance(h, logs._Enqueue)]
    try:
        for _ in range(3):
            await call(gateway, request(seed=20))
    finally:
        root.handlers[:] = handlers
    logs.stop()  # everything queued is written
    assert len(ran) == 1
    texts = [line for line in capfd.readouterr().err.splitlines() if '"gateway.access"' in line]
    full, *replayed = [json.loads(text) for text in texts[-3:]]
    assert len(replayed) == 2
    for line in (full, *replayed):
        assert line.pop("latency_seconds") >= 0
        assert len(line.pop("request_id")) == 32
        assert line.pop("time").endswith("Z")
    for line in replayed:
        assert list(line.items()) == list(full.items())  # the same fields, in the same order
    assert full["cache_result"] == "hit" and full["logger"] == "gateway.access"


async def test_no_replay_under_token_identity(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """Token identity reads a table that can change, so every call is identified again."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"search: {token_digest('gw-token-search')}\n")
    app = await make_gateway(
        cache="memory", identity="token", caller_tokens=tokens, x_caller="ignore"
    )
    ran = full_runs(app)
    metadata = [("authorization", "Bearer gw-token-search")]
    results = [(await call(app, request(seed=21), metadata=metadata))[1] for _ in range(3)]
    assert results == ["miss", "hit", "hit"]
    assert len(ran) == 3
