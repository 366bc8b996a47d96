"""One call as the gateway sees it: what it is (`Call`) and what it did (`CallReport`).

The call runner (gateway.call_runner) parses a call's metadata once, builds its `Call`
and an empty `CallReport`, and hands both to the RPC's pipeline explicitly; nothing
about a call travels in ambient state. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.errors import FieldViolation, GatewayError, InvalidRequest
from gateway.logs import redact
from gateway.tracing import TraceParent

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
PROMPT_DIGEST_CHARS = 16
IDEMPOTENCY_KEY_METADATA = "idempotency-key"
# Visible ASCII (no spaces, no control bytes), 1-255 characters: what Stripe-style APIs accept.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# New request ids: 128 bits from a generator seeded once from the OS. Not uuid4(): its
# os.urandom is a getrandom() system call per call, ~18 us on our VMs (the largest single
# cost of a cache hit). A request id is a correlation token, not a secret: it is echoed to
# the caller and logged.
_REQUEST_IDS = random.Random()
# A forked child would repeat its parent's ids: it seeds its own.
os.register_at_fork(after_in_child=_REQUEST_IDS.seed)


def parse_metadata(pairs: Iterable[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """A call's text metadata, keys lower-cased, first value wins (`-bin` values skipped)."""
    found: dict[str, str] = {}
    for key, value in pairs or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found


def request_id_from(value: str | None) -> str:
    """The caller's `x-request-id` when it is a sane token (and nothing like a key: it is
    echoed, logged and traced), else a new random id."""
    if value is not None and _REQUEST_ID.match(value) and redact(value) == value:
        return value
    return f"{_REQUEST_IDS.getrandbits(128):032x}"


def idempotency_key_from(metadata: Mapping[str, str]) -> str | None:
    """The call's `idempotency-key` metadata, or None when it carries none; InvalidRequest
    when the value cannot be a key (the message never quotes it)."""
    value = metadata.get(IDEMPOTENCY_KEY_METADATA)
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            f"the `{IDEMPOTENCY_KEY_METADATA}` metadata must be 1 to 255 visible ASCII "
            f"characters (no spaces); it has {len(value)} characters. Nothing was sent",
            reason="IDEMPOTENCY_KEY_INVALID",
            violations=[
                FieldViolation(
                    IDEMPOTENCY_KEY_METADATA,
                    "must be 1 to 255 visible ASCII characters, e.g. a UUID",
                )
            ],
        )
    return value


def prompt_digest(prompt: str) -> str:
    """A short digest of a prompt: enough to correlate calls, not to read the prompt."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:PROMPT_DIGEST_CHARS]


def cache_result_name(value: generation_pb2.CacheResult.ValueType) -> str:
    """`CACHE_RESULT_HIT` -> `hit`: the label and `x-cache` value."""
    name = _CACHE_RESULT_NAMES.get(value)
    if name is None:  # not in this build's enum: Name() raises ValueError, as it always did
        name = generation_pb2.CacheResult.Name(value).removeprefix("CACHE_RESULT_").lower()
    return name


# Worked out once: protobuf's enum wrapper resolves names in Python (~0.3-0.8 us a call).
_CACHE_RESULT_NAMES = {
    value: generation_pb2.CacheResult.Name(value).removeprefix("CACHE_RESULT_").lower()
    for value in generation_pb2.CacheResult.values()
}


# Results of calls served without a generation of their own: they cost nothing.
SAVED_RESULTS = frozenset(
    cache_result_name(value)
    for value in (
        generation_pb2.CACHE_RESULT_HIT,
        generation_pb2.CACHE_RESULT_COALESCED,
        generation_pb2.CACHE_RESULT_REPLAYED,
    )
)


@dataclass(frozen=True)
class CacheControl:
    """What the caller allows the cache to do (from `cache-control` metadata)."""

    lookup: bool = True
    store: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CacheControl:
        if value is None:  # nearly every call: no parsing, one shared value
            return _CACHE_ALLOWED
        directives = {d.strip().lower() for d in (value or "").split(",")}
        if "no-store" in directives:
            return cls(lookup=False, store=False)
        if "no-cache" in directives:
            return cls(lookup=False, store=True)
        return cls()


_CACHE_ALLOWED = CacheControl()


@dataclass(frozen=True)
class CallBudget:
    """How long one upstream call may take, and whether the caller's deadline set it."""

    seconds: float
    caller_deadline: bool

    @classmethod
    def of(cls, configured: float, caller_remaining: float | None) -> CallBudget:
        if caller_remaining is not None and caller_remaining < configured:
            return cls(max(caller_remaining, 0.0), caller_deadline=True)
        return cls(configured, caller_deadline=False)


@dataclass(frozen=True, eq=False)
class CallStart:
    """What a call's metadata alone says about it. Identical metadata gives an identical
    start (under an identity policy that reads nothing else), so the call runner derives it
    once per distinct metadata and reuses it (compared and hashed as itself)."""

    metadata: Mapping[str, str] = field(repr=False)  # holds a forwarded key
    caller: str
    caller_raw: str | None
    principal: str
    refused: GatewayError | None
    cache_control: CacheControl
    request_id: str | None = None  # the `x-request-id` metadata, as sent


@dataclass(frozen=True)
class Call:
    """What a call is, known when it starts."""

    service: str
    method: str
    request_id: str
    caller: str  # the bounded metrics label
    metadata: Mapping[str, str] = field(repr=False)  # holds a forwarded key
    budget: CallBudget
    cache_control: CacheControl = field(default_factory=CacheControl)
    # The caller's own name when it was counted as `other` (past --max-callers).
    caller_raw: str | None = None
    # The call's span when tracing is on; its children are made under it.
    trace: TraceParent | None = None
    # The authenticated caller budgets use (gateway.identity), and the error the call
    # fails with when it proved no identity.
    principal: str = ""
    refused: GatewayError | None = None


@dataclass
class CallReport:
    """What a call did, filled in by its pipeline, recorded once by the call runner."""

    account: str | None = None
    model_id: str | None = None
    outputs_requested: int = 0
    outputs_returned: int = 0
    remaining_credits: float | None = None
    cache_result: str | None = None
    upstream_seconds: float | None = None
    invalid_fields: tuple[str, ...] = ()
    prompt_digest: str | None = None
    prompt: str | None = None
