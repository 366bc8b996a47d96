"""A mixed run of calls through a real gateway, and the ledger of what the gateway answered.

Expectations for metrics are computed from the answers (cache result, settings, outputs,
status codes, violations), never hard-coded, so they hold whether the cache serves a
repeat as a hit, a miss or a bypass.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from emulator.records import RecordedRequest
from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.call import cache_result_name
from tests.fixtures import CREATE, Stub, request_with
from tests.status import rich_error

SAVED = frozenset({"hit", "coalesced"})
GENERATED = frozenset({"miss", "bypass", "uncacheable"})

# (fault mode, parameters): one unseeded call each, every one an error.
ERROR_FAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("worker_failure", {"error": "runpod_failed"}),
    ("rate_limit", {}),
    ("insufficient_credits", {}),
    ("http_status", {"status": 502}),
    ("internal_error", {}),
    ("nsfw_prompt", {}),
)


@dataclass
class Outcome:
    """What the gateway answered to one call."""

    caller: str  # the label the gateway should count it under
    code: grpc.StatusCode
    request_id: str | None = None
    cache_result: str | None = None
    num_outputs: int = 0
    outputs_returned: int = 0
    model: str = ""
    remaining_credits: float | None = None
    reason: str | None = None
    invalid_fields: tuple[str, ...] = ()


@dataclass
class Ledger:
    """Every outcome, and the sums metrics must agree with."""

    outcomes: list[Outcome] = field(default_factory=list)

    def ok(self, results: Iterable[str]) -> list[Outcome]:
        wanted = frozenset(results)
        return [
            o for o in self.outcomes if o.code is grpc.StatusCode.OK and o.cache_result in wanted
        ]

    def credits_spent(self) -> Counter[str]:
        spent: Counter[str] = Counter()
        for o in self.ok(GENERATED):
            spent[o.caller] += o.num_outputs
        return spent

    def credits_saved(self) -> Counter[str]:
        saved: Counter[str] = Counter()
        for o in self.ok(SAVED):
            saved[o.caller] += o.num_outputs
        return saved

    def images_generated(self) -> int:
        return sum(o.outputs_returned for o in self.ok(GENERATED))

    def images_filtered(self) -> int:
        return sum(o.num_outputs - o.outputs_returned for o in self.ok(GENERATED))

    def codes(self) -> Counter[str]:
        return Counter(o.code.name for o in self.outcomes)

    def cache_results(self) -> Counter[str]:
        return Counter(o.cache_result for o in self.outcomes if o.cache_result)

    def validation_failures(self) -> int:
        """Fields the gateway itself rejected (upstream rejections carry violations too)."""
        return sum(
            len(set(o.invalid_fields)) for o in self.outcomes if o.reason == "INVALID_REQUEST"
        )

    def upstream_reasons(self) -> Counter[str]:
        """ErrorInfo reasons of calls the upstream failed (not validation, not cancelled)."""
        return Counter(
            o.reason
            for o in self.outcomes
            if o.reason
            and o.code
            not in (
                grpc.StatusCode.OK,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            and o.reason != "INVALID_REQUEST"
        )

    def lowest_balance(self) -> float:
        return min(
            o.remaining_credits for o in self.ok(GENERATED) if o.remaining_credits is not None
        )


request = request_with(prompt="a lighthouse at dawn, observed")


async def record_call(
    stub: Stub,
    ledger: Ledger,
    req: generation_pb2.GenerationRequest,
    *,
    caller: str,
    x_caller: str | None = None,
    timeout: float | None = None,
    cancel_when: Callable[[], Awaitable[None]] | None = None,
) -> Outcome:
    """Make one call and record what came back; with `cancel_when`, the caller cancels the
    call once that has returned."""
    metadata = (("x-caller", x_caller),) if x_caller is not None else ()
    rpc = stub.CreateGeneration(req, metadata=metadata, timeout=timeout)
    if cancel_when is not None:
        await cancel_when()
        rpc.cancel()
    try:
        response = await rpc
    except asyncio.CancelledError:
        outcome = Outcome(caller=caller, code=grpc.StatusCode.CANCELLED)
    except grpc.aio.AioRpcError as error:
        rich = rich_error(error)
        outcome = Outcome(
            caller=caller,
            code=rich.code,
            reason=rich.info.reason if rich.info else None,
            invalid_fields=tuple(f for f, _ in rich.violations),
        )
    else:
        trailing = dict(await rpc.trailing_metadata() or ())
        result = cache_result_name(response.cache_result)
        assert trailing.get("x-cache") == result, (trailing, result)
        outcome = Outcome(
            caller=caller,
            code=grpc.StatusCode.OK,
            cache_result=result,
            num_outputs=response.settings.num_outputs,
            outputs_returned=len(response.outputs),
            model=response.settings.model_id,
            remaining_credits=response.remaining_credits,
        )
    if outcome.code is not grpc.StatusCode.CANCELLED:
        trailing = dict(await rpc.trailing_metadata() or ())
        outcome.request_id = str(trailing["x-request-id"]) if "x-request-id" in trailing else None
    ledger.outcomes.append(outcome)
    return outcome


async def run_workload(
    channel: grpc.aio.Channel, emulator: Emulator, *, default_caller: str
) -> Ledger:
    """Successes (several num_outputs and callers), a seeded repeat, concurrent identical
    calls, filtered outputs, upstream errors, invalid requests, a deadline, a cancellation;
    health checks in between."""
    stub = Stub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    ledger = Ledger()

    for n, x_caller, label in (
        (1, None, default_caller),
        (2, "team-a", "team-a"),
        (3, "team b!", "team_b_"),
        (4, None, default_caller),
    ):
        await record_call(stub, ledger, request(num_outputs=n), caller=label, x_caller=x_caller)
    await health.Check(health_pb2.HealthCheckRequest())

    # A seeded call and its repeat: a hit once the cache serves it.
    for _ in range(2):
        await record_call(
            stub, ledger, request(seed=7, num_outputs=2), caller="team-a", x_caller="team-a"
        )

    # Identical seeded calls at once: one generation, the others coalesced.
    emulator.set_latency(0.4)
    await asyncio.gather(
        *(
            record_call(stub, ledger, request(seed=99, num_outputs=3), caller=default_caller)
            for _ in range(3)
        )
    )
    emulator.set_latency(0.0)

    # The upstream drops a filtered output silently.
    emulator.faults.inject("filter_outputs", drop=1)
    await record_call(stub, ledger, request(num_outputs=3), caller="team-a", x_caller="team-a")

    for mode, params in ERROR_FAULTS:
        emulator.faults.inject(mode, **params)
        await record_call(stub, ledger, request(num_outputs=1), caller=default_caller)
    await health.Check(health_pb2.HealthCheckRequest())

    # Invalid requests: rejected before the upstream.
    await record_call(stub, ledger, request(num_outputs=99, width=1001), caller=default_caller)
    await record_call(stub, ledger, request(prompt=""), caller="team-a", x_caller="team-a")

    # Last, because the emulator may still charge for these after the caller has gone.
    # The upstream takes 2 s: the 0.3 s deadline expires while it works, and the other call
    # is cancelled once it has reached the upstream.
    emulator.set_latency(2.0)
    await record_call(stub, ledger, request(), caller=default_caller, timeout=0.3)
    cancelled = request(prompt="a lighthouse at dawn, observed, then cancelled")

    def is_cancelled_call(record: RecordedRequest) -> bool:
        return record.json is not None and record.json.get("prompt") == cancelled.prompt

    await record_call(
        stub,
        ledger,
        cancelled,
        caller=default_caller,
        cancel_when=lambda: emulator.wait_for_requests(CREATE, 1, where=is_cancelled_call),
    )
    emulator.set_latency(0.0)
    return ledger
