"""The fault-injection table: each row is an emulator switch, the call made, and what the
caller and the emulator's ledger must show afterwards (tests/faults/test_fault_injection.py
runs them; RELIABILITY.md holds the table they produce)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from gateway.errors import GATEWAY_DOMAIN, UPSTREAM_DOMAIN

OUTPUTS = 2  # credits per charge: a second charge of the same call would show as 4
CHARGED = OUTPUTS
GATEWAY = "main"  # realistic settings: 3 tries, the default upstream timeout
SHORT = "short-timeout"  # the same with a 0.5 s upstream timeout
REFUSED = "refused"  # pointed at a loopback port that refuses connections
SHORT_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class Inject:
    """One `emulator.faults.inject(mode, count, **params)`."""

    mode: str
    count: int = 1
    params: dict[str, object] = field(default_factory=dict)

    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        text = f"{self.mode}({shown})" if shown else self.mode
        return f"{text} x{self.count}" if self.count > 1 else text


@dataclass(frozen=True)
class Row:
    """A fault, and what must follow from it."""

    name: str
    faults: tuple[Inject, ...]
    code: grpc.StatusCode
    reason: str | None = None  # ErrorInfo.reason (None for OK)
    domain: str = GATEWAY_DOMAIN
    retry_info: bool = False
    may_have_been_charged: bool = False  # the message says so
    requests: int = 1  # generation requests the emulator received
    generations: int = 0  # of them, charged and handed to the worker (refunds included)
    charged: int = 0  # credits the account lost, per the emulator's ledger
    outputs: int | None = None  # for OK rows: images returned
    gateway: str = GATEWAY
    tries: int | None = None  # requests the gateway made, when not `requests` (none arrived)

    @property
    def attempts(self) -> int:
        return self.requests if self.tries is None else self.tries


def _fails(status: int, *, charge: bool) -> Row:
    return Row(
        f"HTTP {status}, {'charged' if charge else 'not charged'}",
        (Inject("http_status", params={"status": status, "charge": charge}),),
        grpc.StatusCode.INTERNAL,
        f"UPSTREAM_HTTP_{status}",
        may_have_been_charged=True,
        generations=1 if charge else 0,
        charged=CHARGED if charge else 0,
    )


ROWS: tuple[Row, ...] = (
    Row(
        "latency spike inside the deadline",
        (Inject("delay", params={"seconds": 0.2}),),
        grpc.StatusCode.OK,
        generations=1,
        charged=CHARGED,
        outputs=OUTPUTS,
    ),
    Row(
        "latency spike past the upstream timeout",
        (Inject("delay", params={"seconds": 1.0}),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_TIMEOUT",
        may_have_been_charged=True,
        generations=1,
        charged=CHARGED,
        gateway=SHORT,
    ),
    Row(
        "worker failure (refunded), once",
        (Inject("worker_failure", params={"error": "TIMEOUT"}),),
        grpc.StatusCode.OK,
        requests=2,
        generations=2,
        charged=CHARGED,
        outputs=OUTPUTS,
    ),
    Row(
        "worker failure (refunded), every try",
        (Inject("worker_failure", 3, {"error": "TIMEOUT"}),),
        grpc.StatusCode.UNAVAILABLE,
        "TIMEOUT",
        UPSTREAM_DOMAIN,
        retry_info=True,
        requests=3,
        generations=3,
    ),
    Row(
        "HTTP 500 unknown error (before the charge)",
        (Inject("internal_error"),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_UNKNOWN_ERROR",
        may_have_been_charged=True,
    ),
    *(_fails(status, charge=charge) for status in (500, 502, 503, 504) for charge in (False, True)),
    Row(
        "429 with Retry-After, once",
        (Inject("rate_limit", params={"retry_after": 1}),),
        grpc.StatusCode.OK,
        requests=2,
        generations=1,
        charged=CHARGED,
        outputs=OUTPUTS,
    ),
    Row(
        "429 with Retry-After, every try",
        (Inject("rate_limit", 3, {"retry_after": 1}),),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        retry_info=True,
        requests=3,
    ),
    Row(
        "429 without Retry-After, once",
        (Inject("rate_limit", params={"retry_after": None}),),
        grpc.StatusCode.OK,
        requests=2,
        generations=1,
        charged=CHARGED,
        outputs=OUTPUTS,
    ),
    Row(
        "429 without Retry-After, every try",
        (Inject("rate_limit", 3, {"retry_after": None}),),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        retry_info=True,
        requests=3,
    ),
    Row(
        "queue full, every try",
        (Inject("queue_full", 3),),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_LIMIT_REACHED",
        UPSTREAM_DOMAIN,
        retry_info=True,
        requests=3,
    ),
    Row(
        "connection refused",
        (),
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNREACHABLE",
        retry_info=True,
        requests=0,
        tries=3,
        gateway=REFUSED,
    ),
    Row(
        "connection dropped before the charge",
        (Inject("drop_connection"),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_CONNECTION_LOST",
        may_have_been_charged=True,
    ),
    Row(
        "connection dropped after the charge",
        (Inject("drop_connection", params={"charge": True}),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_CONNECTION_LOST",
        may_have_been_charged=True,
        generations=1,
        charged=CHARGED,
    ),
    Row(
        "reset mid-response",
        (Inject("reset_mid_response"),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_CONNECTION_LOST",
        may_have_been_charged=True,
        generations=1,
        charged=CHARGED,
    ),
    *(
        Row(
            f"200 {what}",
            (Inject("malformed_success", params={"variant": variant}),),
            grpc.StatusCode.INTERNAL,
            "UPSTREAM_BAD_RESPONSE",
            may_have_been_charged=True,
            generations=1,
            charged=CHARGED,
        )
        for variant, what in (
            ("truncated", "with truncated JSON"),
            ("not_json", "with a body that is not JSON"),
            ("empty", "with an empty body"),
            ("wrong_shape", "of the wrong shape"),
            ("missing_fields", "with fields missing"),
        )
    ),
    Row(
        "slowly trickling body",
        (Inject("trickle_body", params={"seconds": 0.3, "chunk_bytes": 16}),),
        grpc.StatusCode.OK,
        generations=1,
        charged=CHARGED,
        outputs=OUTPUTS,
    ),
    Row(
        "trickling body past the upstream timeout",
        (Inject("trickle_body", params={"seconds": 1.0, "chunk_bytes": 16}),),
        grpc.StatusCode.INTERNAL,
        "UPSTREAM_TIMEOUT",
        may_have_been_charged=True,
        generations=1,
        charged=CHARGED,
        gateway=SHORT,
    ),
    Row(
        "all outputs filtered",
        (Inject("filter_outputs", params={"drop": OUTPUTS}),),
        grpc.StatusCode.OK,
        generations=1,
        charged=CHARGED,
        outputs=0,
    ),
)
