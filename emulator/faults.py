"""Fault injection: a FIFO of failures, each used by the next generation requests to pass auth.

`inject("worker_failure", count=2, error="TIMEOUT")` makes the next two create requests that
authenticate fail that way; faults queued one after another apply in order, one per request.
A fault is used up by the request that takes it even when that request fails earlier (for
example in validation) than the stage where the fault acts.

Modes and parameters:

=====================  ===========================================================
mode                   what the request gets
=====================  ===========================================================
worker_failure         500 {"error": error, "settings"}; charged, then refunded.
                       `error` default "runpod_failed".
rate_limit             429 text "Too Many Requests"; `retry_after` seconds (default 1);
                       with `retry_after` null the answer has no `Retry-After` header.
queue_full             400 {"error": "queue_limit_reached", "settings"}.
insufficient_credits   400 {"error": "insufficient_credits", "settings"}; nothing charged.
internal_error         500 {"error": "An unknown error has occured"} (sic); with
                       `with_settings` true the settings are included.
http_status            `status` (default 502) with a plain-text `body` (default
                       "error code: <status>"), as a proxy would; with `charge` true
                       the generation runs and is charged first.
malformed_success      200 whose body is not the documented shape; `variant` one of
                       wrong_shape (default, {"outputs":"nope"}), not_json, empty,
                       truncated, missing_fields. Charged.
banned                 403 {"error": "user_banned"}.
nsfw_prompt            400 {"error": "nsfw_prompt", "settings"}; nothing charged.
image_url_error        400 {"error": "image_url_width_height_error", "settings"}, as when
                       the init image cannot be fetched or decoded; nothing charged.
                       Applies with or without an init image in the request.
filter_outputs         200 with `drop` (default 1) outputs silently missing; all charged.
drop_connection        the socket closes without a response; with `charge` true it
                       closes after the generation was charged.
reset_mid_response     charged; the status line, the headers (with the full
                       Content-Length) and the first half of the body are sent, then
                       the connection is reset (TCP RST).
trickle_body           charged; the answer's body arrives in `chunk_bytes` (default 16)
                       pieces spread over `seconds` (default 1.0), as a slow link
                       delivers it. Acts on whatever answer the worker gives.
delay                  `seconds` (default 1.0) more worker time for that request.
=====================  ===========================================================
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class FaultMode(enum.StrEnum):
    """The failure modes the emulator can inject."""

    WORKER_FAILURE = "worker_failure"
    RATE_LIMIT = "rate_limit"
    QUEUE_FULL = "queue_full"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    INTERNAL_ERROR = "internal_error"
    HTTP_STATUS = "http_status"
    MALFORMED_SUCCESS = "malformed_success"
    BANNED = "banned"
    NSFW_PROMPT = "nsfw_prompt"
    IMAGE_URL_ERROR = "image_url_error"
    FILTER_OUTPUTS = "filter_outputs"
    DROP_CONNECTION = "drop_connection"
    RESET_MID_RESPONSE = "reset_mid_response"
    TRICKLE_BODY = "trickle_body"
    DELAY = "delay"


MALFORMED_VARIANTS = ("wrong_shape", "not_json", "empty", "truncated", "missing_fields")

# Parameter name -> (type, default) for each mode.
_PARAMS: dict[FaultMode, dict[str, tuple[type, object]]] = {
    FaultMode.WORKER_FAILURE: {"error": (str, "runpod_failed")},
    FaultMode.RATE_LIMIT: {"retry_after": (int, 1)},
    FaultMode.QUEUE_FULL: {},
    FaultMode.INSUFFICIENT_CREDITS: {},
    FaultMode.INTERNAL_ERROR: {"with_settings": (bool, False)},
    FaultMode.HTTP_STATUS: {"status": (int, 502), "body": (str, None), "charge": (bool, False)},
    FaultMode.MALFORMED_SUCCESS: {"variant": (str, "wrong_shape")},
    FaultMode.BANNED: {},
    FaultMode.NSFW_PROMPT: {},
    FaultMode.IMAGE_URL_ERROR: {},
    FaultMode.FILTER_OUTPUTS: {"drop": (int, 1)},
    FaultMode.DROP_CONNECTION: {"charge": (bool, False)},
    FaultMode.RESET_MID_RESPONSE: {},
    FaultMode.TRICKLE_BODY: {"seconds": (float, 1.0), "chunk_bytes": (int, 16)},
    FaultMode.DELAY: {"seconds": (float, 1.0)},
}

# Parameters whose null means something: no Retry-After header; the default text body.
_NULLABLE = frozenset({"retry_after", "body"})


@dataclass(frozen=True)
class Fault:
    """One injected failure with its parameters (defaults filled in)."""

    mode: FaultMode
    params: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def optional_int_param(self, name: str) -> int | None:
        """An integer parameter's value, or None when it was given as null."""
        value = self.params[name]
        assert value is None or isinstance(value, int)
        return value

    def int_param(self, name: str) -> int:
        """An integer parameter's value."""
        value = self.params[name]
        assert isinstance(value, int)
        return value

    def float_param(self, name: str) -> float:
        """A float parameter's value."""
        value = self.params[name]
        assert isinstance(value, float)
        return value

    def str_param(self, name: str) -> str:
        """A string parameter's value."""
        value = self.params[name]
        assert isinstance(value, str)
        return value

    def flag(self, name: str) -> bool:
        """A boolean parameter's value."""
        return self.params[name] is True

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"mode": str(self.mode), **self.params}


def make_fault(mode: str, params: Mapping[str, object]) -> Fault:
    """Check a mode and its parameters (ValueError naming the problem) and fill defaults."""
    try:
        fault_mode = FaultMode(mode)
    except ValueError:
        known = ", ".join(m.value for m in FaultMode)
        raise ValueError(f"unknown fault mode {mode!r}; known: {known}") from None
    spec = _PARAMS[fault_mode]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"{fault_mode} takes no parameter {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name, (kind, default) in spec.items():
        value = params.get(name, default)
        if value is None and name not in _NULLABLE:
            raise ValueError(f"{fault_mode} parameter {name} must be {kind.__name__}")
        if value is not None:
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"{fault_mode} parameter {name} must be {kind.__name__}")
        values[name] = value
    if fault_mode is FaultMode.HTTP_STATUS:
        status = values["status"]
        assert isinstance(status, int)
        if not 100 <= status <= 599:
            raise ValueError("http_status parameter status must be 100-599")
        if values["body"] is None:
            values["body"] = f"error code: {status}"
    if fault_mode is FaultMode.MALFORMED_SUCCESS and values["variant"] not in MALFORMED_VARIANTS:
        raise ValueError(
            f"malformed_success variant must be one of {', '.join(MALFORMED_VARIANTS)}"
        )
    for name in ("retry_after", "drop"):
        number = values.get(name)
        if isinstance(number, int) and number < 0:
            raise ValueError(f"{fault_mode} parameter {name} must be >= 0")
    seconds = values.get("seconds")
    if isinstance(seconds, float) and not 0 <= seconds < float("inf"):
        raise ValueError(f"{fault_mode} parameter seconds must be >= 0")
    chunk = values.get("chunk_bytes")
    if isinstance(chunk, int) and chunk < 1:
        raise ValueError(f"{fault_mode} parameter chunk_bytes must be >= 1")
    return Fault(fault_mode, MappingProxyType(values))


@dataclass
class _Entry:
    fault: Fault
    remaining: int


class FaultQueue:
    """Pending faults, taken one per generation request in the order injected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[_Entry] = deque()

    def inject(self, mode: str, count: int = 1, **params: object) -> Fault:
        """Queue `mode` for the next `count` requests (ValueError on a bad mode or parameter)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        fault = make_fault(mode, params)
        with self._lock:
            self._pending.append(_Entry(fault, count))
        return fault

    def take(self) -> Fault | None:
        """The fault for the current request, if any, using up one of its uses."""
        with self._lock:
            if not self._pending:
                return None
            entry = self._pending[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._pending.popleft()
            return entry.fault

    def pending(self) -> list[dict[str, object]]:
        """Queued faults with their remaining uses, for the control API."""
        with self._lock:
            return [{**e.fault.to_dict(), "count": e.remaining} for e in self._pending]

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._pending.clear()
