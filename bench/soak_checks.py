"""What `make soak` checks (bench/soak.py drives the load): the calls it sends, the codes
each may end with, and the verdict on a run from the emulator's records and ledger. Pure:
no I/O, so its tests feed it made-up ledgers."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import Any

ACCOUNTS = {
    "a": "sc-" + hashlib.sha256(b"soak account a").hexdigest(),
    "b": "sc-" + hashlib.sha256(b"soak account b").hexdigest(),
}
KINDS = {"unseeded": 25, "seeded": 35, "invalid": 15, "idempotent": 10, "faulted": 15}
PAID = frozenset({"miss", "bypass", "uncacheable"})
# The faults queued (none charges without answering), and the codes a call whose last
# upstream attempt took one may end with. `None`: no fault.
FAULTS: dict[str, dict[str, Any]] = {
    "worker_failure": {},  # refunded; retried
    "rate_limit": {"retry_after": 0},  # retried
    "queue_full": {},  # retried
    "insufficient_credits": {},
    "nsfw_prompt": {},
    "internal_error": {},
    "drop_connection": {},
    "http_status": {"status": 502},
    "filter_outputs": {"drop": 1},
    "delay": {"seconds": 0.3},
}
CODES_AFTER: dict[str | None, frozenset[str]] = {
    None: frozenset({"OK"}),
    "filter_outputs": frozenset({"OK"}),
    "delay": frozenset({"OK"}),
    "worker_failure": frozenset({"UNAVAILABLE"}),
    "rate_limit": frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"}),
    "queue_full": frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"}),
    "insufficient_credits": frozenset({"FAILED_PRECONDITION"}),
    "nsfw_prompt": frozenset({"INVALID_ARGUMENT"}),
    "internal_error": frozenset({"INTERNAL"}),
    "drop_connection": frozenset({"INTERNAL"}),
    "http_status": frozenset({"INTERNAL", "UNAVAILABLE"}),
}
# A call the circuit breaker refused sent nothing upstream; it is expected after a run of
# upstream failures.
CIRCUIT_OPEN = ("UNAVAILABLE", "UPSTREAM_CIRCUIT_OPEN")


@dataclass
class Outcome:
    """One call: what was sent and how it ended."""

    n: int
    kind: str
    account: str
    tag: str  # the prompt's tag (a seeded call: shared by its seed)
    code: str = ""
    reason: str = ""
    cache_result: str = ""
    credits: int = 0  # num_outputs of a paid answer
    seconds: float = 0.0
    idempotency_key: str | None = None
    expected: frozenset[str] = field(default_factory=frozenset)


def prompt_of(tag: str) -> str:
    return f"soak {tag} a lighthouse at dusk"


def tag_of(prompt: str) -> str | None:
    parts = prompt.split(" ")
    return parts[1] if len(parts) > 2 and parts[0] == "soak" else None


def slope_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread


def judge(
    outcomes: list[Outcome],
    records: list[dict[str, Any]],
    charged: dict[str, int],
) -> tuple[list[str], dict[str, Any]]:
    """The failures found, and the figures to report."""
    failures: list[str] = []
    by_tag: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in sorted(records, key=lambda r: r["received_at"]):
        body = record["json"] or {}
        tag = tag_of(str(body.get("prompt", "")))
        if record["path"].endswith("/generation/create") and tag is not None:
            by_tag[tag].append(record)
    for outcome in outcomes:
        attempts = by_tag.get(outcome.tag, [])
        if outcome.kind == "invalid":
            outcome.expected = frozenset({"INVALID_ARGUMENT"})
            if attempts:
                failures.append(f"call {outcome.n}: an invalid request reached the upstream")
        elif outcome.kind == "seeded":
            # Its answer is its flight's, whichever call of the seed led it.
            outcome.expected = frozenset().union(
                CODES_AFTER[None], *(CODES_AFTER[r["fault"]] for r in attempts if r["fault"])
            )
        elif outcome.kind == "idempotent":
            outcome.expected = frozenset().union(
                CODES_AFTER[None], *(CODES_AFTER[r["fault"]] for r in attempts if r["fault"])
            )
        else:
            outcome.expected = CODES_AFTER[attempts[-1]["fault"] if attempts else None]
        refused = (outcome.code, outcome.reason) == CIRCUIT_OPEN
        if outcome.code not in outcome.expected and not refused:
            failures.append(
                f"call {outcome.n} ({outcome.kind}): {outcome.code} {outcome.reason}, "
                f"expected {'/'.join(sorted(outcome.expected))}"
            )
    reported = collections.Counter()
    for outcome in outcomes:
        reported[outcome.account] += outcome.credits
    for account in ACCOUNTS:
        if charged[account] != reported[account]:
            failures.append(
                f"account {account}: the ledger charged {charged[account]} credits, the "
                f"gateway reported {reported[account]} paid"
            )
    per_key = {
        tag: sum(1 for r in attempts if r["status"] == 200)
        for tag, attempts in by_tag.items()
        if tag.startswith("soak-key-")
    }
    for key, generations in sorted(per_key.items()):
        if generations > 1:
            failures.append(f"{key}: {generations} charged generations for one key")
    figures = {
        "charged": charged,
        "reported_paid": {account: reported[account] for account in ACCOUNTS},
        "upstream_records": len(records),
        "faults_taken": dict(collections.Counter(r["fault"] for r in records if r["fault"])),
        "idempotency_keys": len(per_key),
        "most_generations_per_key": max(per_key.values(), default=0),
        "circuit_refusals": sum(1 for o in outcomes if (o.code, o.reason) == CIRCUIT_OPEN),
    }
    return failures, figures


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        latencies = sorted(o.seconds for o in mine)
        table[kind] = {
            "calls": len(mine),
            "codes": dict(collections.Counter(o.code for o in mine)),
            "cache": dict(collections.Counter(o.cache_result for o in mine if o.cache_result)),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        }
    return table
