"""Credit budgets per caller: reserve before spending, settle at the actual cost.

`Budgets` answers for the policy (gateway.budget_policy, its file re-read when it changes)
and the ledger (gateway.budget_ledger: this process's, or Redis shared by every replica).
`BudgetedGenerator` wraps the upstream generator *inside* the cache, so only calls that
really go upstream pay: cache hits and coalesced waiters never reach it. `BudgetedUpscaler`
does the same for upscales (one credit each), inside the upscale cache.

A call reserves its cost (`num_outputs`, the upstream default when unset) before it is
sent. Success settles at the charged cost; an error the upstream refunds or that sent
nothing releases the reservation; an outcome that may have been charged keeps it
(each error class's `may_have_been_charged`). A call that does not fit fails RESOURCE_EXHAUSTED
BUDGET_EXHAUSTED (QuotaFailure, RetryInfo until the window resets), nothing sent.

When the Redis ledger fails, `redis_down` decides: `closed` refuses the call
(UNAVAILABLE, nothing sent), `open` serves it against this process's own approximate
ledger. Both are logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from gateway.budget_ledger import NO_LIMIT, Ledger, MemoryLedger, Reserved
from gateway.budget_policy import BudgetPolicy, Limits, live_windows, window_id, window_reset
from gateway.cache_backend import BackendFailure, BackendGuard
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    BudgetExhausted,
    BudgetUnavailable,
    CallerNotPermitted,
    GatewayError,
)
from gateway.generation import Generated, GenerationCall, Generator
from gateway.upscale import UpscaleCall, Upscaled, Upscaler
from gateway.upstream_defaults import DEFAULT_NUM_OUTPUTS, UPSCALE_CREDITS

_log = logging.getLogger(__name__)
T = TypeVar("T")

# Whether the upstream may have charged for a call that ended with this error: True keeps
# the reservation (spent at its cost), False releases it. One row per error class
# (tests/budgets prove it complete). NOTE for the merge: another branch adds the same fact
# as a ClassVar on the error classes; this table can then be derived from it.
# A reservation outlives a crashed gateway by at most this past the call's own timeout.
LEASE_MARGIN_SECONDS = 60.0
# How often the policy file is re-read and the metrics refreshed without calls.
REFRESH_SECONDS = 5.0


def may_have_been_charged(error: BaseException) -> bool:
    """True when the call may have cost credits (anything unknown does)."""
    if isinstance(error, GatewayError):
        return error.may_have_been_charged  # each error class declares it (gateway.errors)
    return True


@dataclass(frozen=True)
class WindowUsage:
    """One window of a caller's budget, as GetBudget and the metrics show it."""

    window: str
    limit: int
    spent: int
    reserved: int
    resets_at: float  # epoch seconds


@dataclass(frozen=True)
class BudgetStatus:
    caller: str
    limits: Limits | None  # None: the caller has no budget (refused)
    in_flight: int
    windows: tuple[WindowUsage, ...]
    shared: bool  # False when served from this process's own ledger


class BudgetReport(Protocol):
    """What the budgets tell the metrics (gateway.budget_metrics implements it)."""

    def usage(self, caller: str, windows: Sequence[WindowUsage], in_flight: int) -> None: ...

    def rejected(self, caller: str, reason: str) -> None: ...

    def ledger_failed(self, decision: str) -> None: ...

    def reservations(self, delta: int) -> None: ...


class NullReport:
    def usage(self, caller: str, windows: Sequence[WindowUsage], in_flight: int) -> None:
        return None

    def rejected(self, caller: str, reason: str) -> None:
        return None

    def ledger_failed(self, decision: str) -> None:
        return None

    def reservations(self, delta: int) -> None:
        return None


@dataclass(frozen=True)
class Reservation:
    caller: str
    id: str
    cost: int
    ledger: Ledger


class PolicySource(Protocol):
    def current(self) -> BudgetPolicy: ...


class StaticPolicy:
    def __init__(self, policy: BudgetPolicy) -> None:
        self._policy = policy

    def current(self) -> BudgetPolicy:
        return self._policy


class Budgets:
    """The policy and the ledger, for the generator and GetBudget (see the module doc)."""

    def __init__(
        self,
        policy: PolicySource,
        *,
        ledger: Ledger | None = None,
        guard: BackendGuard | None = None,
        redis_down: str = "closed",
        lease_seconds: float = 600.0 + LEASE_MARGIN_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
        report: BudgetReport | None = None,
    ) -> None:
        self._policy = policy
        self._local = MemoryLedger()
        self._shared = ledger  # None: budgets are this process's own
        self._guard = guard
        self._redis_down = redis_down
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._report = report or NullReport()
        self._background: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._outage_logged = False  # once per outage; every failure is counted

    @property
    def policy(self) -> BudgetPolicy:
        return self._policy.current()

    def _windows(self, limits: Limits, now: float) -> list[tuple[str, str, int]]:
        return [(w, window_id(w, now), limit) for w, limit in limits.credits.items()]

    async def reserve(self, caller: str, cost: int) -> Reservation:
        """Hold `cost` credits for `caller`; raise CallerNotPermitted, BudgetExhausted or
        BudgetUnavailable (each before anything is sent)."""
        limits = self.policy.limits_for(caller)
        if limits is None:
            self._report.rejected(caller, "not_permitted")
            raise CallerNotPermitted(
                f"the budget policy has no budget for caller {caller} and no default; "
                "nothing was sent",
                metadata={"caller": caller},
            )
        now = self._clock.wall()
        windows = self._windows(limits, now)
        rid = uuid.uuid4().hex
        max_in_flight = NO_LIMIT if limits.max_in_flight is None else limits.max_in_flight

        async def reserve_in(ledger: Ledger) -> Reserved:
            return await ledger.reserve(
                caller,
                rid,
                cost,
                [(wid, limit) for _, wid, limit in windows],
                max_in_flight=max_in_flight,
                now=now,
                expires_at=now + self._lease_seconds,
                live=live_windows(now),
            )

        ledger: Ledger = self._local
        if self._shared is not None and self._guard is not None:
            shared = self._shared
            try:
                reserved = await self._guard.run(lambda: reserve_in(shared))
                ledger, self._outage_logged = shared, False
            except BackendFailure as exc:
                self._shared_failed(exc, caller)
                reserved = await reserve_in(self._local)
        else:
            reserved = await reserve_in(self._local)
        in_flight = reserved.in_flight
        usage = [
            WindowUsage(w, limit, state.spent, state.reserved, window_reset(w, now))
            for (w, _, limit), state in zip(windows, reserved.windows, strict=True)
        ]
        if reserved.refused == 0:
            usage = [
                WindowUsage(u.window, u.limit, u.spent, u.reserved + cost, u.resets_at)
                for u in usage
            ]
        self._report.usage(caller, usage, in_flight)
        if reserved.refused == -1:
            self._report.rejected(caller, "in_flight")
            raise BudgetExhausted(
                f"caller {caller} has its maximum of {limits.max_in_flight} paid calls in "
                "flight; nothing was sent, retry when one ends",
                retry_after=1.0,
                metadata={
                    "caller": caller,
                    "window": "in_flight",
                    "limit": str(limits.max_in_flight),
                },
            )
        if reserved.refused > 0:
            full = usage[reserved.refused - 1]
            self._report.rejected(caller, full.window)
            resets = dt.datetime.fromtimestamp(full.resets_at, dt.UTC).isoformat()
            raise BudgetExhausted(
                f"caller {caller} has spent its budget of {full.limit} credits per "
                f"{full.window} ({full.spent} spent, {full.reserved} reserved, {cost} asked); "
                f"nothing was sent; it resets at {resets}",
                retry_after=max(full.resets_at - now, 0.0),
                metadata={
                    "caller": caller,
                    "window": full.window,
                    "limit": str(full.limit),
                    "spent": str(full.spent),
                    "reserved": str(full.reserved),
                    "resets_at": resets,
                },
            )
        self._report.reservations(1)
        return Reservation(caller, rid, cost, ledger)

    def _shared_failed(self, exc: BackendFailure, caller: str) -> None:
        """The shared ledger failed: refuse (closed) or go on with the local one (open)."""
        self._report.ledger_failed(self._redis_down)
        logged, self._outage_logged = self._outage_logged, True
        if self._redis_down == "closed":
            if not logged:
                _log.error(
                    "budget store unreachable; refusing calls (--budgets-redis-down closed)",
                    extra={"caller": caller, "error": str(exc)},
                )
            raise BudgetUnavailable(
                "the budget store is unreachable, so the call's budget cannot be checked; "
                "nothing was sent, retry shortly",
                retry_after=1.0,
            ) from exc
        if not logged:
            _log.warning(
                "budget store unreachable; serving against this gateway's local budget "
                "(--budgets-redis-down open)",
                extra={"caller": caller, "error": str(exc)},
            )

    async def settle(self, reservation: Reservation, actual: int) -> None:
        """Spend `actual` credits of `reservation` (0 releases it). A shared ledger that
        fails is retried for a few seconds; past that the reservation expires (as spent)."""
        self._report.reservations(-1)
        now = self._clock.wall()
        ledger = reservation.ledger
        if ledger is self._local or self._guard is None:
            await ledger.settle(reservation.caller, reservation.id, actual, now=now)
            return
        done = await self._guard.must(
            lambda: ledger.settle(reservation.caller, reservation.id, actual, now=now),
            within=5.0,
        )
        if not done:
            _log.error(
                "cannot settle a budget reservation in Redis; it expires as spent",
                extra={"caller": reservation.caller, "credits": reservation.cost},
            )

    def settle_later(self, reservation: Reservation, actual: int) -> None:
        """`settle` in a task of its own (for a call being cancelled)."""
        task = asyncio.ensure_future(self.settle(reservation, actual))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def status(self, caller: str) -> BudgetStatus:
        """The caller's limits, what is spent and reserved in each window, and when each
        resets (GetBudget). BudgetUnavailable when the shared ledger fails and budgets fail
        closed."""
        limits = self.policy.limits_for(caller)
        if limits is None:
            return BudgetStatus(caller, None, 0, (), self._shared is not None)
        now = self._clock.wall()
        windows = self._windows(limits, now)
        ids = [wid for _, wid, _ in windows]
        shared = self._shared is not None
        if self._shared is not None and self._guard is not None:
            ledger = self._shared
            try:
                in_flight, states = await self._guard.run(
                    lambda: ledger.usage(caller, ids, now=now)
                )
            except BackendFailure as exc:
                self._shared_failed(exc, caller)
                in_flight, states = await self._local.usage(caller, ids, now=now)
                shared = False
        else:
            in_flight, states = await self._local.usage(caller, ids, now=now)
        usage = tuple(
            WindowUsage(w, limit, s.spent, s.reserved, window_reset(w, now))
            for (w, _, limit), s in zip(windows, states, strict=True)
        )
        self._report.usage(caller, usage, in_flight)
        return BudgetStatus(caller, limits, in_flight, usage, shared)

    def watch(self, interval: float = REFRESH_SECONDS) -> None:
        """Every `interval` seconds, until `aclose`: re-read the policy file and refresh the
        named callers' usage (the metrics then show other replicas' spending too)."""
        if self._watch is None:
            self._watch = asyncio.create_task(self._refresh(interval), name="budgets")

    async def _refresh(self, interval: float) -> None:
        while True:
            for caller in sorted(self.policy.callers):
                try:
                    await self.status(caller)
                except BudgetUnavailable:
                    break  # logged and counted; tried again next round
            await self._clock.sleep(interval)

    async def aclose(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._background:
            await asyncio.wait(list(self._background), timeout=5.0)
        if self._shared is not None:
            await self._shared.aclose()


def cost_of(call: GenerationCall) -> int:
    """What a call reserves: its num_outputs, the upstream default when unset."""
    request = call.request
    return request.num_outputs if request.HasField("num_outputs") else DEFAULT_NUM_OUTPUTS


class BudgetedGenerator:
    """Reserves before the upstream call and settles after it (see the module doc)."""

    def __init__(self, inner: Generator, budgets: Budgets) -> None:
        self._inner = inner
        self._budgets = budgets

    async def generate(self, call: GenerationCall) -> Generated:
        return await paying(
            self._budgets,
            call.principal or call.caller,
            cost_of(call),
            lambda: self._inner.generate(call),
            lambda generated: generated.response.settings.num_outputs,
        )


class BudgetedUpscaler:
    """The same for an upscale: one credit reserved before it is sent."""

    def __init__(self, inner: Upscaler, budgets: Budgets) -> None:
        self._inner = inner
        self._budgets = budgets

    async def upscale(self, call: UpscaleCall) -> Upscaled:
        return await paying(
            self._budgets,
            call.principal or call.caller,
            UPSCALE_CREDITS,
            lambda: self._inner.upscale(call),
            lambda _: UPSCALE_CREDITS,
        )


async def paying(
    budgets: Budgets,
    caller: str,
    cost: int,
    perform: Callable[[], Awaitable[T]],
    charged: Callable[[T], int],
) -> T:
    """`perform()` with `cost` reserved for `caller` first, settled at `charged(result)`;
    an error keeps or releases the reservation by its `may_have_been_charged`."""
    reservation = await budgets.reserve(caller, cost)
    try:
        result = await perform()
    except asyncio.CancelledError:
        # Cut mid-call (the caller left, or shutdown): it may have been sent.
        budgets.settle_later(reservation, reservation.cost)
        raise
    except BaseException as error:
        kept = may_have_been_charged(error)
        await budgets.settle(reservation, reservation.cost if kept else 0)
        raise
    await budgets.settle(reservation, charged(result))
    return result
