"""The secret-hygiene sweep (issue 9): known secrets through every kind of call, and then
everything the system emitted searched for them, raw and in the common encodings.

Real child processes: an emulator, five gateways (all at log level debug with
`--log-prompts`, `--cache redis` on one Redis, a budget policy, tracing to an OTLP/gRPC
receiver in this process), in two configurations, since token identity needs the gateway's
own Stablecog key and so excludes callers' keys:

- "token": two gateways (A1, A2) with a configured key in a key file, callers known by
  gateway tokens;
- "caller keys": sidecar gateways with no configured key, forwarding callers' keys: B1,
  and for the fault rows that need them one with a short upstream timeout and one aimed at
  a port that refuses connections (its circuit breaker on).

The mix: every validation row of tests/gateway/cases.py; cache hits, coalesced calls
(across the replicas too); idempotent replays, key reuse, an invalid key, a charged error
replayed; every row of tests/faults/rows.py and every other emulator fault mode; bad keys
(malformed `authorization` with control bytes, sent as raw HTTP/2 frames since grpc's
clients refuse them; a rejected caller key; a configured key the upstream rejects, by
rotating the key file); budgets (a refused call, GetBudget); gateway tokens (known,
unknown, malformed); ListModels and GetCredits; undecodable request bytes; a drain with
calls in flight cut after a short grace; a Redis outage (the server stopped mid-run) and
its recovery.

Collected: every gateway log line (and each access-log field), every /metrics scrape
(OpenMetrics and text), every gRPC answer (message, details string, initial and trailing
metadata, the google.rpc.Status and each detail decoded), every exported span (name,
attributes, events, links, resource), every Redis key and value (SCAN by type, before the
outage and at the end) and every command Redis was sent (MONITOR). The emulator's records
are the control: each Stablecog key must have reached it (as the SHA-256 it records), so
the markers searched for were really in play; the gateway tokens must not have.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from emulator.faults import FaultMode
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_fingerprint
from gateway.logs import REDACTED, redact
from gateway.servicer import SERVICE_NAME
from tests.faults.rows import GATEWAY, REFUSED, ROWS, SHORT, SHORT_TIMEOUT_SECONDS
from tests.fixtures import CREATE, Stub
from tests.gateway.cases import BOUNDARIES
from tests.hygiene import raw_http2
from tests.hygiene.redis_view import Dump, Monitor, dump
from tests.hygiene.secrets import PREFIX, WINDOW, Leak, Matcher, Secret, forms
from tests.observability.test_tracing import Receiver
from tests.processes import EmulatorProcess, GatewayProcess
from tests.services import RedisServer, refusing_port


def _hex(label: str) -> str:
    return hashlib.sha256(f"secret hygiene: {label}".encode()).hexdigest()


# The secrets: each a marker no other text of the run can hold by chance.
CONFIGURED_KEY = "sc-" + _hex("the configured key")
REJECTED_CONFIGURED_KEY = "sc-" + _hex("a configured key the upstream rejects")
CALLER_KEY = "sc-" + _hex("a caller's own key")
REJECTED_CALLER_KEY = "sc-" + _hex("a caller key the upstream rejects")
MALFORMED_LEFT = "sc-" + _hex("malformed key, left part")[:40]
MALFORMED_RIGHT = _hex("malformed key, right part")[:40]
# Gateway tokens are any visible ASCII: some characters that need URL-encoding, some that
# the log redactor's bearer pattern does not cover.
TOKEN_MAIN = "gwt!main*+/=~" + _hex("gateway token, main")[:32]
TOKEN_POOR = "gwt!poor*+/=~" + _hex("gateway token, poor")[:32]
TOKEN_UNKNOWN = "gwt!unknown*" + _hex("gateway token, unknown")[:32]
TOKEN_LEFT = "gwt!left*" + _hex("malformed gateway token, left")[:32]
TOKEN_RIGHT = _hex("malformed gateway token, right")[:32]
IDEMPOTENCY = {
    name: f"idem#{name}?a=b&c=" + _hex(f"idempotency key {name}")[:32]
    for name in ("replayed", "charged", "abandoned", "outage", "caller", "caller-charged")
}
IDEMPOTENCY_TOO_LONG = ("idem-too-long-" + _hex("idempotency key, too long") * 5)[:300]

SECRETS = [
    Secret("configured key", CONFIGURED_KEY),
    Secret("rejected configured key", REJECTED_CONFIGURED_KEY),
    Secret("caller key", CALLER_KEY),
    Secret("rejected caller key", REJECTED_CALLER_KEY),
    Secret("malformed key (left)", MALFORMED_LEFT),
    Secret("malformed key (right)", MALFORMED_RIGHT),
    Secret("gateway token", TOKEN_MAIN),
    Secret("gateway token (poor)", TOKEN_POOR),
    Secret("unknown gateway token", TOKEN_UNKNOWN),
    Secret("malformed gateway token (left)", TOKEN_LEFT),
    Secret("malformed gateway token (right)", TOKEN_RIGHT),
    *(Secret(f"idempotency key {name}", key) for name, key in IDEMPOTENCY.items()),
    Secret("invalid idempotency key", IDEMPOTENCY_TOO_LONG),
]
STABLECOG_KEYS = (CONFIGURED_KEY, REJECTED_CONFIGURED_KEY, CALLER_KEY, REJECTED_CALLER_KEY)
GATEWAY_TOKENS = (TOKEN_MAIN, TOKEN_POOR, TOKEN_UNKNOWN)

POLICY = """
default:
  credits: {day: 100000}
callers:
  main: {credits: {day: 100000}}
  poor: {credits: {day: 1}}
  keys: {credits: {day: 100000}}
"""
CREATE_METHOD = f"/{SERVICE_NAME}/CreateGeneration"
ACCESS_FIELDS = {
    "time", "level", "logger", "message", "request_id", "method", "caller", "grpc_code",
    "latency_seconds", "upstream_seconds", "cache_result", "num_outputs", "outputs_returned",
    "credits_spent", "credits_saved", "credits_remaining", "model_id", "account",
    "error_reason", "invalid_fields", "prompt_sha256", "prompt", "caller_raw", "trace_id",
}  # fmt: skip
DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def bearer(token: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {token}")


def status_text(raw: bytes, seen: Counter[str]) -> str:
    """A google.rpc.Status and each of its details, decoded, as text (and the raw bytes)."""
    status = status_pb2.Status.FromString(raw)
    parts = [str(status), raw.decode("latin-1")]
    for detail in status.details:
        parts.append(detail.value.decode("latin-1"))
        for kind in DETAIL_TYPES:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                parts.append(str(message))
                seen[kind.DESCRIPTOR.name] += 1
                if isinstance(message, error_details_pb2.ErrorInfo):
                    seen[f"reason {message.reason}"] += 1
                    parts += [f"{k}={v}" for k, v in message.metadata.items()]
                    if message.metadata.get("idempotent_replay") == "true":
                        seen["idempotent_replay"] += 1
    return "\n".join(parts)


@dataclass
class Answer:
    code: grpc.StatusCode
    reason: str = ""
    cache: str = ""


@dataclass
class Answers:
    """Every gRPC answer of the run, as text, and what kinds of answers were seen."""

    texts: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)

    async def call(
        self, method: Any, message: Any, metadata: list[tuple[str, str]], timeout: float = 30
    ) -> Answer:
        rpc = method(message, metadata=metadata, timeout=timeout)
        parts = []
        try:
            response = await rpc
            answer = Answer(grpc.StatusCode.OK)
            parts.append(str(response))
        except grpc.aio.AioRpcError as error:
            answer = Answer(error.code())
            parts.append(f"{error.code()} {error.details()} {error.debug_error_string()}")
        parts.append(repr(list(await rpc.initial_metadata() or ())))
        for key, value in await rpc.trailing_metadata() or ():
            parts.append(f"{key}: {value!r}")
            if key == "grpc-status-details-bin":
                assert isinstance(value, bytes)
                parts.append(status_text(value, self.seen))
                info = _error_info(value)
                answer.reason = info.reason if info else ""
            elif key == "x-cache":
                answer.cache = str(value)
                self.seen[f"x-cache {value}"] += 1
        self.seen[f"code {answer.code.name}"] += 1
        self.texts.append("\n".join(parts))
        return answer

    async def raw(
        self, port: int, path: str, message: bytes, metadata: list[tuple[bytes, bytes]]
    ) -> raw_http2.RawAnswer:
        got = await asyncio.to_thread(raw_http2.unary, port, path, message, metadata)
        self.texts.append(got.text())
        for name, value in got.headers:
            if name == b"grpc-status-details-bin":
                raw = base64.b64decode(value + b"=" * (-len(value) % 4))
                self.texts.append(status_text(raw, self.seen))
        self.seen[f"raw grpc-status {got.grpc_status}"] += 1
        return got


def _error_info(raw: bytes) -> error_details_pb2.ErrorInfo | None:
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


class Control:
    """The emulator's control API."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=10)

    async def inject(self, mode: str, count: int = 1, **params: object) -> None:
        answer = await self.http.post(
            "/_emulator/faults", json={"mode": mode, "count": count, **params}
        )
        answer.raise_for_status()

    async def clear_faults(self) -> None:
        (await self.http.delete("/_emulator/faults")).raise_for_status()

    async def records(self) -> list[dict[str, Any]]:
        answer = await self.http.get("/_emulator/requests")
        answer.raise_for_status()
        return list(answer.json()["requests"])

    async def wait_for_creates(self, count: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(r["path"] == CREATE for r in await self.records()) < count:
            if loop.time() > deadline:
                raise AssertionError(f"the emulator did not receive {count} generations")
            await asyncio.sleep(0.02)

    async def creates(self) -> int:
        return sum(r["path"] == CREATE for r in await self.records())


async def scrape(gateway: GatewayProcess) -> dict[str, str]:
    """/metrics in both formats."""
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=10) as http:
        text = await http.get(url, headers={"Accept": "text/plain"})
        open_metrics = await http.get(url, headers={"Accept": "application/openmetrics-text"})
    assert "openmetrics" in open_metrics.headers["content-type"]
    return {"text": text.text, "openmetrics": open_metrics.text}


async def inflight(gateway: GatewayProcess) -> float:
    text = (await scrape(gateway))["text"]
    found = re.search(r"^stablecog_inflight_requests (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def request(prompt: str, **fields: Any) -> generation_pb2.GenerationRequest:
    return generation_pb2.GenerationRequest(prompt=prompt, **fields)


@dataclass
class Run:
    """The processes of the sweep and what they emitted."""

    tmp: Path
    redis: RedisServer
    control: Control
    receiver: Receiver
    receiver_port: int
    answers: Answers = field(default_factory=Answers)
    gateways: dict[str, GatewayProcess] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    scrapes: dict[str, dict[str, str]] = field(default_factory=dict)
    dumps: list[Dump] = field(default_factory=list)
    monitors: list[Monitor] = field(default_factory=list)
    fault_modes: set[str] = field(default_factory=set)

    def gateway(self, name: str, **env: str) -> GatewayProcess:
        process = GatewayProcess(
            {
                "GATEWAY_LOG_LEVEL": "debug",
                "GATEWAY_LOG_PROMPTS": "true",
                "GATEWAY_CACHE": "redis",
                "GATEWAY_REDIS_URL": self.redis.url,
                "GATEWAY_BUDGETS": str(self.tmp / "budgets.yaml"),
                "GATEWAY_CIRCUIT_FAILURES": "0",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.receiver_port}",
                "OTEL_SERVICE_NAME": f"hygiene-{name}",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=hygiene",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                **env,
            },
            self.tmp / f"gateway-{name}.log",
        )
        self.gateways[name] = process
        return process

    def stub(self, name: str) -> Stub:
        if name not in self.channels:
            self.channels[name] = grpc.aio.insecure_channel(self.gateways[name].target)
        return Stub(self.channels[name])

    async def create(
        self, name: str, req: generation_pb2.GenerationRequest, metadata: list[tuple[str, str]]
    ) -> Answer:
        return await self.answers.call(self.stub(name).CreateGeneration, req, metadata)

    async def reads(self, name: str, metadata: list[tuple[str, str]]) -> list[Answer]:
        """ListModels, GetCredits and GetBudget."""
        stub = self.stub(name)
        return [
            await self.answers.call(stub.ListModels, generation_pb2.ListModelsRequest(), metadata),
            await self.answers.call(stub.GetCredits, generation_pb2.GetCreditsRequest(), metadata),
            await self.answers.call(stub.GetBudget, generation_pb2.GetBudgetRequest(), metadata),
        ]

    async def raw(self, name: str, message: bytes, authorization: bytes) -> raw_http2.RawAnswer:
        return await self.answers.raw(
            self.gateways[name].port, CREATE_METHOD, message, [(b"authorization", authorization)]
        )


@pytest.fixture
async def run(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Run]:
    receiver_server = grpc.aio.server()
    receiver = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, receiver_server)
    receiver_port = receiver_server.add_insecure_port("127.0.0.1:0")
    await receiver_server.start()
    emulator = EmulatorProcess(
        [
            *("--latency", "0", "--rate-limit", "0", "--queue-limit", "0"),
            *("--initial-credits", "100000"),
            *("--account", CONFIGURED_KEY, "--account", CALLER_KEY),
        ],
        tmp_path / "emulator.log",
    )
    emulator.start()
    (tmp_path / "budgets.yaml").write_text(POLICY)
    sweep = Run(tmp_path, redis_server, Control(emulator.base_url), receiver, receiver_port)
    sweep.monitors.append(Monitor(redis_server.socket_path))
    try:
        yield sweep
    finally:
        for channel in sweep.channels.values():
            await channel.close()
        for process in sweep.gateways.values():
            process.kill()
        emulator.kill()
        await sweep.control.http.aclose()
        await receiver_server.stop(grace=None)


async def validation(run: Run, name: str, metadata: list[tuple[str, str]]) -> None:
    """Every boundary row of tests/gateway/cases.py, and a few more refusals."""
    extra: list[tuple[dict[str, Any], list[str]]] = [
        ({"prompt": "   "}, ["prompt"]),
        ({"model_id": "not-a-uuid"}, ["model_id"]),
        ({"init_image_url": "ftp://example.invalid/x.png"}, ["init_image_url"]),
    ]
    for i, (fields, invalid) in enumerate([*BOUNDARIES, *extra]):
        fields = {"prompt": f"hygiene validation row {i}", "num_outputs": 1, **fields}
        answer = await run.create(name, generation_pb2.GenerationRequest(**fields), metadata)
        # A row valid by the static rules may still be refused by the catalog-aware ones
        # (pixel-steps at the model's default size); every invalid row must be refused.
        if invalid:
            assert answer.reason == "INVALID_REQUEST", (fields, answer)


async def cached(
    run: Run, names: tuple[str, ...], metadata: list[tuple[str, str]], seed: int
) -> None:
    """A miss, hits (on every gateway named: across replicas), and calls coalesced onto one
    slow generation (on the first gateway and on the others)."""
    req = request("hygiene cached", seed=seed, num_outputs=1)
    assert (await run.create(names[0], req, metadata)).cache == "miss"
    for name in names:
        assert (await run.create(name, req, metadata)).cache == "hit"
    await run.control.inject("delay", seconds=1.5)
    before = await run.control.creates()
    slow = request("hygiene coalesced", seed=seed + 1, num_outputs=1)
    first = asyncio.ensure_future(run.create(names[0], slow, metadata))
    await run.control.wait_for_creates(before + 1)
    waiters = [run.create(name, slow, metadata) for name in (names[0], *names[1:])]
    answers = await asyncio.gather(first, *waiters)
    assert [a.cache for a in answers[1:]] == ["coalesced"] * len(waiters), answers
    assert await run.control.creates() == before + 1


async def idempotent(
    run: Run,
    names: tuple[str, str],
    metadata: list[tuple[str, str]],
    replayed: str,
    charged: str,
) -> None:
    """A replay (on the other gateway), a reuse, an invalid key, a charged error replayed."""
    first, other = names
    keyed = [*metadata, ("idempotency-key", replayed)]
    req = request("hygiene idempotent", num_outputs=1)
    assert (await run.create(first, req, keyed)).code is grpc.StatusCode.OK
    assert (await run.create(other, req, keyed)).cache == "replayed"
    reused = await run.create(first, request("hygiene idempotent, another"), keyed)
    assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
    too_long = await run.create(first, req, [*metadata, ("idempotency-key", IDEMPOTENCY_TOO_LONG)])
    assert too_long.reason == "IDEMPOTENCY_KEY_INVALID"
    await run.control.inject("http_status", status=502, charge=True)
    keyed = [*metadata, ("idempotency-key", charged)]
    req = request("hygiene idempotent, charged error", num_outputs=1)
    assert (await run.create(first, req, keyed)).reason == "UPSTREAM_HTTP_502"
    again = await run.create(other, req, keyed)
    assert again.reason == "UPSTREAM_HTTP_502"


async def faults(run: Run, names: dict[str, str], metadata: list[tuple[str, str]]) -> None:
    """Every row of tests/faults/rows.py whose gateway kind is in `names`, then every
    emulator fault mode no row uses, with its default parameters."""
    driven: set[str] = set()
    for row in ROWS:
        if row.gateway not in names:
            continue
        for inject in row.faults:
            await run.control.inject(inject.mode, inject.count, **inject.params)
        answer = await run.create(
            names[row.gateway], request(f"hygiene fault: {row.name}", num_outputs=2), metadata
        )
        assert answer.code is row.code, (row.name, answer)
        await run.control.clear_faults()
        driven |= {inject.mode for inject in row.faults}
    for mode in sorted({str(m) for m in FaultMode} - driven):
        await run.control.inject(mode)
        await run.create(
            names[GATEWAY], request(f"hygiene fault mode {mode}", num_outputs=2), metadata
        )
        await run.control.clear_faults()
        driven.add(mode)
    assert driven == {str(m) for m in FaultMode}
    run.fault_modes |= driven


async def token_mix(run: Run) -> None:
    """The token configuration: A1 and A2, the configured key, gateway tokens."""
    main = [bearer(TOKEN_MAIN)]
    for name in ("a1", "a2"):
        assert [a.code for a in await run.reads(name, main)] == [grpc.StatusCode.OK] * 3
    await run.reads("a1", [bearer(TOKEN_POOR)])
    await validation(run, "a1", main)
    await cached(run, ("a1", "a2"), main, seed=101)
    await idempotent(run, ("a1", "a2"), main, IDEMPOTENCY["replayed"], IDEMPOTENCY["charged"])
    await faults(run, {GATEWAY: "a1"}, main)
    poor = await run.create(
        "a1", request("hygiene over budget", num_outputs=2), [bearer(TOKEN_POOR)]
    )
    assert poor.reason == "BUDGET_EXHAUSTED"
    # Caller identity: an unknown token, none, malformed ones (a space; control bytes).
    for metadata in ([bearer(TOKEN_UNKNOWN)], [], [bearer(f"{TOKEN_LEFT} {TOKEN_RIGHT}")]):
        answer = await run.create("a1", request("hygiene who is calling", num_outputs=1), metadata)
        assert answer.reason == "CALLER_UNAUTHENTICATED", answer
        await run.reads("a2", metadata)
    message = request("hygiene raw frames", num_outputs=1).SerializeToString()
    for byte in (b"\x01", b"\x7f", b"\t"):
        token = b"Bearer " + TOKEN_LEFT.encode() + byte + TOKEN_RIGHT.encode()
        assert (await run.raw("a1", message, token)).grpc_status == "16"
    undecodable = await run.raw("a1", b"\xff\xff\xff\xff", f"Bearer {TOKEN_MAIN}".encode())
    assert undecodable.grpc_status == "3"


async def caller_key_mix(run: Run) -> None:
    """The caller-key configuration: B1 (and its short-timeout and refused siblings)."""
    key = [bearer(CALLER_KEY)]
    assert [a.code for a in await run.reads("b1", key)] == [grpc.StatusCode.OK] * 3
    rejected = await run.reads("b1", [bearer(REJECTED_CALLER_KEY)])
    assert rejected[1].code is grpc.StatusCode.UNAUTHENTICATED
    await validation(run, "b1", key)
    await cached(run, ("b1",), key, seed=201)
    await idempotent(run, ("b1", "b1"), key, IDEMPOTENCY["caller"], IDEMPOTENCY["caller-charged"])
    await faults(run, {GATEWAY: "b1", SHORT: "b-short", REFUSED: "b-refused"}, key)
    answer = await run.create(
        "b1", request("hygiene rejected key", num_outputs=1), [bearer(REJECTED_CALLER_KEY)]
    )
    assert answer.reason == "UNAUTHORIZED", answer
    assert (await run.create("b1", request("hygiene no key"), [])).reason == "MISSING_API_KEY"
    spaced = [bearer(f"{MALFORMED_LEFT} {MALFORMED_RIGHT}")]
    assert (
        await run.create("b1", request("hygiene spaced key"), spaced)
    ).reason == "MALFORMED_API_KEY"
    message = request("hygiene raw frames", num_outputs=1).SerializeToString()
    for byte in (b"\x01", b"\x7f", b"\t", b"\x00"):
        value = b"Bearer " + MALFORMED_LEFT.encode() + byte + MALFORMED_RIGHT.encode()
        got = await run.raw("b1", message, value)
        assert got.grpc_status == "16" or got.reset, got
    undecodable = await run.raw("b1", b"\xff\xff\xff\xff", f"Bearer {CALLER_KEY}".encode())
    assert undecodable.grpc_status == "3"
    # The refused gateway's breaker opens after a run of failures: fail-fast answers too.
    for _ in range(6):
        answer = await run.create("b-refused", request("hygiene circuit"), key)
        if answer.reason == "UPSTREAM_CIRCUIT_OPEN":
            break
    assert answer.reason == "UPSTREAM_CIRCUIT_OPEN", answer


async def drain(run: Run) -> None:
    """A2 stopped (SIGTERM, 0.5 s grace) with a keyed seeded call in flight on it and a
    waiter for the same generation on A1: the call is cut (GENERATION_ABANDONED)."""
    main = [bearer(TOKEN_MAIN)]
    await run.control.inject("delay", seconds=5.0)
    before = await run.control.creates()
    req = request("hygiene drained", seed=301, num_outputs=1)
    keyed = [*main, ("idempotency-key", IDEMPOTENCY["abandoned"])]
    cut = asyncio.ensure_future(run.create("a2", req, keyed))
    await run.control.wait_for_creates(before + 1)
    waiter = asyncio.ensure_future(run.create("a1", req, main))
    a1 = run.gateways["a1"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await inflight(a1) < 1:  # the waiter is in A1, waiting on A2's lease
        assert loop.time() < deadline, "A1's waiter never started"
        await asyncio.sleep(0.02)
    run.scrapes["a2 (before its drain)"] = await scrape(run.gateways["a2"])
    run.gateways["a2"].terminate()
    answer = await cut
    assert (answer.code, answer.reason) == (grpc.StatusCode.INTERNAL, "GENERATION_ABANDONED")
    await waiter
    await run.gateways["a2"].wait(timeout=20)


async def redis_outage(run: Run) -> None:
    """Redis stopped mid-run: keyed calls fail closed, budgets closed (A) or open (B), the
    cache serves without it; then Redis is back (empty) and calls succeed again."""
    run.dumps.append(dump(run.redis.socket_path))
    run.redis.stop()
    run.monitors[-1].finish()
    main = [bearer(TOKEN_MAIN)]
    key = [bearer(CALLER_KEY)]
    outage = [*main, ("idempotency-key", IDEMPOTENCY["outage"])]
    assert (
        await run.create("a1", request("hygiene outage, keyed"), outage)
    ).code is grpc.StatusCode.UNAVAILABLE
    assert (
        await run.create("a1", request("hygiene outage"), main)
    ).reason == "BUDGET_STORE_UNAVAILABLE"
    await run.reads("a1", main)
    keyed = [*key, ("idempotency-key", IDEMPOTENCY["caller"])]
    answer = await run.create("b1", request("hygiene outage, keyed"), keyed)
    assert answer.reason == "IDEMPOTENCY_STORE_UNAVAILABLE", answer
    assert (
        await run.create("b1", request("hygiene cached", seed=201, num_outputs=1), key)
    ).cache == "hit"
    assert (
        await run.create("b1", request("hygiene outage, new", seed=202, num_outputs=1), key)
    ).cache == "miss"
    await run.reads("b1", key)
    run.redis.start()
    run.monitors.append(Monitor(run.redis.socket_path))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    for name, metadata in (("a1", main), ("b1", key)):
        while (
            await run.create(
                name, request("hygiene after the outage", seed=401, num_outputs=1), metadata
            )
        ).code is not grpc.StatusCode.OK:
            assert loop.time() < deadline, f"{name} did not recover from the Redis outage"
            await asyncio.sleep(0.2)


async def rejected_configured_key(run: Run) -> None:
    """The key file rotated to a key the upstream rejects: INTERNAL
    CONFIGURED_API_KEY_REJECTED (and logged at error level)."""
    key_file = run.tmp / "api-key"
    staged = run.tmp / "api-key.new"
    staged.write_text(REJECTED_CONFIGURED_KEY + "\n")
    staged.replace(key_file)  # a new inode, as a Secret update swaps it
    answer = await run.create(
        "a1", request("hygiene rejected configured key"), [bearer(TOKEN_MAIN)]
    )
    assert answer.reason == "CONFIGURED_API_KEY_REJECTED", answer
    await run.reads("a1", [bearer(TOKEN_MAIN)])


def log_texts(gateway: GatewayProcess) -> tuple[str, list[dict[str, Any]]]:
    """A gateway's log as written, plus every JSON value decoded (an escaped control byte
    or non-ASCII character is then itself), and its access-log entries."""
    written = gateway.logs()
    decoded, access = [], []
    for line in written.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # grpc's own C-core lines: searched as written
        decoded.append(" ".join(f"{k}={v}" for k, v in entry.items()))
        if entry.get("message") == "call":
            access.append(entry)
    return written + "\n" + "\n".join(decoded), access


async def test_no_secret_leaves_in_any_log_metric_answer_span_or_redis_record(run: Run) -> None:
    (run.tmp / "api-key").write_text(CONFIGURED_KEY + "\n")
    token_env = {
        "STABLECOG_API_URL": str(run.control.http.base_url).rstrip("/"),
        "STABLECOG_API_KEY_FILE": str(run.tmp / "api-key"),
        "GATEWAY_IDENTITY": "token",
        "GATEWAY_CALLER_TOKENS": str(run.tmp / "tokens.yaml"),
    }
    (run.tmp / "tokens.yaml").write_text(
        f"main: {hashlib.sha256(TOKEN_MAIN.encode()).hexdigest()}\n"
        f"poor: {hashlib.sha256(TOKEN_POOR.encode()).hexdigest()}\n"
    )
    keys_env = {"STABLECOG_API_URL": token_env["STABLECOG_API_URL"], "GATEWAY_CALLER": "keys",
                "GATEWAY_BUDGETS_REDIS_DOWN": "open"}  # fmt: skip
    with refusing_port() as refused:
        starting = [
            run.gateway("a1", **token_env),
            run.gateway("a2", **token_env, GATEWAY_GRACE_PERIOD="0.5"),
            run.gateway("b1", **keys_env),
            run.gateway("b-short", **keys_env, GATEWAY_UPSTREAM_TIMEOUT=str(SHORT_TIMEOUT_SECONDS)),
            run.gateway(
                "b-refused",
                **{**keys_env, "STABLECOG_API_URL": f"http://127.0.0.1:{refused}"},
                GATEWAY_CIRCUIT_FAILURES="5",
            ),
        ]
        await asyncio.gather(*(g.start(timeout=60) for g in starting))
        await token_mix(run)
        await caller_key_mix(run)
        await drain(run)
        await redis_outage(run)
        await rejected_configured_key(run)
        for name, gateway in run.gateways.items():
            if name != "a2":
                run.scrapes[name] = await scrape(gateway)
        for name, gateway in run.gateways.items():
            if name != "a2":
                gateway.terminate()
                assert await gateway.wait(timeout=30) == 0, gateway.logs()
    run.dumps.append(dump(run.redis.socket_path))
    run.redis.stop()
    monitored = [monitor.finish() for monitor in run.monitors]

    # The controls: each Stablecog key reached the upstream (the markers were in play), no
    # gateway token or malformed key did, and every kind of answer happened.
    records = await run.control.records()
    reached = {r["token_sha256"] for r in records}
    for key in STABLECOG_KEYS:
        assert hashlib.sha256(key.encode()).hexdigest() in reached, key
    for token in (*GATEWAY_TOKENS, MALFORMED_LEFT, TOKEN_LEFT):
        assert not any(
            hashlib.sha256(value.encode()).hexdigest() in reached
            for value in (token, f"{token} {MALFORMED_RIGHT}")
        )
    seen = run.answers.seen
    for wanted in (
        "reason INVALID_REQUEST", "reason UNDECODABLE_REQUEST", "reason BUDGET_EXHAUSTED",
        "reason CALLER_UNAUTHENTICATED", "reason MALFORMED_API_KEY", "reason UNAUTHORIZED",
        "reason MISSING_API_KEY", "reason CONFIGURED_API_KEY_REJECTED",
        "reason IDEMPOTENCY_KEY_REUSED", "reason IDEMPOTENCY_KEY_INVALID",
        "reason IDEMPOTENCY_STORE_UNAVAILABLE", "reason BUDGET_STORE_UNAVAILABLE",
        "reason GENERATION_ABANDONED", "reason UPSTREAM_UNREACHABLE", "reason UPSTREAM_TIMEOUT",
        "reason UPSTREAM_CIRCUIT_OPEN", "reason USER_BANNED", "reason INSUFFICIENT_CREDITS",
        "x-cache hit", "x-cache miss", "x-cache coalesced", "x-cache replayed",
        "idempotent_replay", "RetryInfo", "QuotaFailure", "BadRequest",
    ):  # fmt: skip
        assert seen[wanted], f"the mix never produced {wanted}: {sorted(seen)}"
    assert run.fault_modes == {str(m) for m in FaultMode}

    # Everything emitted, by channel.
    texts: list[tuple[str, str]] = []
    log_lines = access_lines = 0
    fingerprints = {account_fingerprint(key) for key in STABLECOG_KEYS}
    for name, gateway in run.gateways.items():
        text, access = log_texts(gateway)
        log_lines += len(gateway.logs().splitlines())
        access_lines += len(access)
        texts.append((f"log of {name}", text))
        for entry in access:
            assert set(entry) <= ACCESS_FIELDS, set(entry) - ACCESS_FIELDS
            assert entry.get("account") in (None, *fingerprints), entry
            for field_name, value in entry.items():
                texts.append((f"access-log field {field_name} ({name})", str(value)))
    series = 0
    for name, scraped in run.scrapes.items():
        for form, text in scraped.items():
            texts.append((f"/metrics of {name} ({form})", text))
            if form == "text":
                series += sum(1 for line in text.splitlines() if line and line[0] != "#")
    texts += [(f"gRPC answer {i}", text) for i, text in enumerate(run.answers.texts)]
    spans = run.receiver.spans
    texts += [(f"span {span.name}", f"{resource}\n{span}") for resource, span in spans]
    redis_keys = sum(len(d.entries) for d in run.dumps)
    texts += [(f"Redis dump {i}", d.text()) for i, d in enumerate(run.dumps)]
    texts += [(f"Redis MONITOR feed {i}", text) for i, text in enumerate(monitored)]

    # Proof each channel was really collected.
    assert access_lines >= len(run.answers.texts) // 2
    assert {resource.get("service.name") for resource, _ in spans} == {
        f"hygiene-{name}" for name in run.gateways
    }
    assert series > 100 and redis_keys > 10 and all(len(t) > 1000 for t in monitored)
    assert any(":idem:" in key for d in run.dumps for key in d.entries)

    matcher = Matcher(SECRETS)
    leaks: list[Leak] = [leak for where, text in texts for leak in matcher.leaks(where, text)]
    # One example of each (secret, form, channel), so several leaks at once all show.
    distinct = {(leak.secret, leak.form, leak.where.split(" ")[0]): leak for leak in leaks}
    shown = "\n".join(
        f"{leak.secret} ({leak.form}) in {leak.where}: ...{leak.excerpt!r}..."
        for leak in list(distinct.values())[:40]
    )
    assert not leaks, f"{len(leaks)} leaks, {len(distinct)} kinds:\n{shown}"
    types = sum((Counter(d.types) for d in run.dumps), Counter())
    print(
        f"\nsecret hygiene: {len(SECRETS)} secrets; {log_lines} log lines ({access_lines} "
        f"access), {len(run.answers.texts)} gRPC answers, {series} series in "
        f"{len(run.scrapes)} scrapes x2 formats, {len(spans)} spans, {redis_keys} Redis keys "
        f"({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}), "
        f"{sum(len(t) for t in monitored)} bytes of MONITOR feed; searched "
        f"{sum(len(t) for _, t in texts)} characters"
    )


# The matcher itself: each form it claims to catch, caught; the rule `redact` follows.

SAMPLE = "sc-" + _hex("matcher sample")


@pytest.mark.parametrize(
    "leak",
    [
        SAMPLE,
        SAMPLE.upper(),
        SAMPLE.encode().hex(),
        SAMPLE.encode().hex().upper(),
        "%73%63%2D" + SAMPLE[3:],  # URL-encoded in full, upper-case escapes
        base64.b64encode(SAMPLE.encode()).decode(),
        base64.b64encode(b"x" + SAMPLE.encode() + b"y").decode(),
        base64.b64encode(b"xy" + SAMPLE.encode()).decode(),
        base64.urlsafe_b64encode(b'{"k":"' + SAMPLE.encode() + b'"}').decode(),
        SAMPLE[: PREFIX + 1] + "…",
        "…" + SAMPLE[-WINDOW:],
        "sc-ab12",  # anything key-shaped
    ],
)
def test_the_matcher_catches_every_form_it_claims(leak: str) -> None:
    found = Matcher([Secret("sample", SAMPLE)]).leaks("test", f"a line with {leak} in it")
    assert found


def test_the_matcher_passes_what_redaction_leaves() -> None:
    redacted = redact(f"authorization=Bearer {SAMPLE} key={SAMPLE}")
    assert SAMPLE not in redacted and f"sc-{REDACTED}" in redacted
    matcher = Matcher([Secret("sample", SAMPLE)])
    assert matcher.leaks("test", redacted) == []
    # `sc-` and 5 characters: below the prefix rule, caught only as a key shape.
    assert [leak.form for leak in matcher.leaks("test", SAMPLE[:PREFIX])] == [
        "sc- and key characters"
    ]
    assert matcher.leaks("test", hashlib.sha256(SAMPLE.encode()).hexdigest()) == []
    assert {form for form, _, _ in forms(SAMPLE)} >= {"as is", "hex", "url-encoded"}
    with pytest.raises(ValueError, match="too short"):
        Matcher([Secret("short", "abc")])
