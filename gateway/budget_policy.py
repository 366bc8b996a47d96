"""The credit budget policy (the `--budgets` YAML file) and its windows. Pure: no I/O.

    default:                 # callers the file does not list; omit it to refuse them
      credits: {day: 100}    # credits per window: minute, hour, day, month (UTC calendar)
      max_in_flight: 2       # generations at once; omit for no limit
    callers:
      search:
        credits: {hour: 50, day: 500, month: 10000}
        max_in_flight: 10

A caller with no `credits` has no credit limit (said explicitly, never by accident: a file
that does not parse keeps the previous policy). Caller names are matched as the identity
names them (gateway.labels.distinct_label: a certificate's name may be written as is).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import yaml

from gateway import strict_yaml
from gateway.labels import distinct_label

WINDOWS = ("minute", "hour", "day", "month")
# How far another replica's clock may lag: a window stays live this long after it ends.
CLOCK_SKEW_SECONDS = 300.0
_CALLER_KEYS = frozenset({"credits", "max_in_flight"})
_TOP_KEYS = frozenset({"default", "callers"})
# The largest limits held exactly: GetBudget's uint32 max_in_flight, and credits as the
# Redis ledger's Lua numbers (doubles) count them.
MAX_IN_FLIGHT = 2**32 - 1
MAX_CREDITS = 2**53


@dataclass(frozen=True)
class Limits:
    """One caller's budget: credits per window (window name -> limit), and the most
    generations in flight (None: no limit)."""

    credits: Mapping[str, int] = field(default_factory=dict)
    max_in_flight: int | None = None


@dataclass(frozen=True)
class BudgetPolicy:
    """Every caller's limits; `default` for callers not listed (None: they are refused)."""

    callers: Mapping[str, Limits] = field(default_factory=dict)
    default: Limits | None = None

    def limits_for(self, caller: str) -> Limits | None:
        return self.callers.get(caller, self.default)


def parse_policy(text: str) -> BudgetPolicy:
    """The policy file's text as a BudgetPolicy; ValueError saying what is wrong."""
    try:
        document = strict_yaml.load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("expected a mapping with `callers` and/or `default`")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}; expected callers, default")
    callers_doc = document.get("callers") or {}
    if not isinstance(callers_doc, dict):
        raise ValueError("`callers` must map caller names to their limits")
    callers: dict[str, Limits] = {}
    for raw_name, limits in callers_doc.items():
        name = distinct_label(str(raw_name))
        if not name:
            raise ValueError(f"caller name {str(raw_name)[:63]!r} is empty")
        if name in callers:
            raise ValueError(f"caller {name} is listed twice")
        callers[name] = _limits(limits, f"callers.{name}")
    default = None
    if "default" in document:
        default = _limits(document["default"], "default")
    return BudgetPolicy(callers=callers, default=default)


def _limits(value: object, where: str) -> Limits:
    # An empty entry (`search:` with its lines commented out) is refused, never read as
    # "no limits": unlimited is said explicitly, `{}`.
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: expected a mapping with credits and/or max_in_flight ({{}} for no "
            f"limits), got {'nothing' if value is None else repr(value)[:63]}"
        )
    unknown = set(value) - _CALLER_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(map(str, unknown))}")
    credits_doc = value.get("credits", {})
    if not isinstance(credits_doc, dict):
        raise ValueError(
            f"{where}.credits: expected a mapping of window to credits ({{}} for none)"
        )
    credits: dict[str, int] = {}
    for window, limit in credits_doc.items():
        if window not in WINDOWS:
            raise ValueError(f"{where}.credits: unknown window {window!r}; one of {WINDOWS}")
        credits[str(window)] = _count(limit, f"{where}.credits.{window}", MAX_CREDITS)
    in_flight = value.get("max_in_flight")
    return Limits(
        credits={w: credits[w] for w in WINDOWS if w in credits},
        max_in_flight=None
        if in_flight is None
        else _count(in_flight, f"{where}.max_in_flight", MAX_IN_FLIGHT),
    )


def _count(value: object, where: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: expected a whole number, 0 or more, got {value!r}")
    if value > maximum:
        raise ValueError(f"{where}: at most {maximum}, got {value}")
    return value


def window_id(window: str, wall: float) -> str:
    """The id of the `window` (UTC calendar) that wall time `wall` falls in."""
    moment = dt.datetime.fromtimestamp(wall, dt.UTC)
    formats = {"minute": "%Y%m%d%H%M", "hour": "%Y%m%d%H", "day": "%Y%m%d", "month": "%Y%m"}
    return f"{window}:{moment.strftime(formats[window])}"


def live_windows(wall: float) -> tuple[str, ...]:
    """Every window id (of every kind, whatever a policy names) that is current at `wall`
    or was within CLOCK_SKEW_SECONDS: a ledger forgets only windows not among them, so a
    replica on another policy (mid-rollout) or a lagging clock never wipes one in use."""
    ids = {window_id(w, t) for w in WINDOWS for t in (wall, wall - CLOCK_SKEW_SECONDS)}
    return tuple(sorted(ids))


def window_reset(window: str, wall: float) -> float:
    """When the `window` that `wall` falls in ends (epoch seconds)."""
    moment = dt.datetime.fromtimestamp(wall, dt.UTC)
    if window == "minute":
        start = moment.replace(second=0, microsecond=0)
        end = start + dt.timedelta(minutes=1)
    elif window == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
    elif window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(days=1)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + dt.timedelta(days=days)
    return end.timestamp()
