"""Where budgets are kept: per caller, credits spent and reserved in each window, and the
reservations in flight. `MemoryLedger` is one process's; gateway.budget_ledger_redis keeps
the same state in Redis, updated by Lua scripts with the same rules, for every replica.

The rules (both ledgers):
- `reserve` first expires stale reservations (their gateway crashed or lost them): an
  expired reservation counts as spent at its cost, since its call may have been sent.
  Then it admits the cost only if it fits every window (spent + reserved + cost <= limit)
  and the in-flight limit, and holds it in each window until settled. It forgets windows
  that are neither among its windows nor `live` (gateway.budget_policy.live_windows) once
  nothing is reserved in them.
- `settle(actual)` turns a reservation into `actual` credits spent (0 releases it), in the
  windows it was reserved in. Settling a reservation that is gone (expired) does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

NO_LIMIT = -1


@dataclass(frozen=True)
class WindowState:
    """One window's spent and reserved credits (before the reservation being made)."""

    spent: int
    reserved: int


@dataclass(frozen=True)
class Reserved:
    """The outcome of `reserve`: `refused` is 0 when admitted, the 1-based index of the
    window that was full, or -1 for the in-flight limit; `windows` is their state before
    this reservation; `in_flight` counts the caller's reservations (this one included)."""

    refused: int
    in_flight: int
    windows: tuple[WindowState, ...]


class Ledger(Protocol):
    async def reserve(
        self,
        caller: str,
        reservation: str,
        cost: int,
        windows: Sequence[tuple[str, int]],
        *,
        max_in_flight: int,
        now: float,
        expires_at: float,
        live: Sequence[str] = (),
    ) -> Reserved:
        """Reserve `cost` in each (window id, limit) unless it does not fit."""
        ...

    async def settle(self, caller: str, reservation: str, actual: int, *, now: float) -> None:
        """Spend `actual` of a reservation (0 releases it) and end it."""
        ...

    async def usage(
        self, caller: str, windows: Sequence[str], *, now: float
    ) -> tuple[int, tuple[WindowState, ...]]:
        """The caller's reservations in flight and the state of these windows."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Held:
    cost: int
    windows: tuple[str, ...]
    expires_at: float


@dataclass
class _Account:
    spent: dict[str, int] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)
    held: dict[str, _Held] = field(default_factory=dict)


class MemoryLedger:
    """This process's ledger (no I/O: each method completes without yielding, so it is
    atomic within the process). Windows that are no longer current are forgotten once
    nothing is reserved in them."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}

    def _account(self, caller: str, now: float) -> _Account:
        account = self._accounts.setdefault(caller, _Account())
        for reservation, held in list(account.held.items()):
            if held.expires_at <= now:
                self._end(account, reservation, held.cost)
        return account

    @staticmethod
    def _end(account: _Account, reservation: str, actual: int) -> None:
        held = account.held.pop(reservation, None)
        if held is None:
            return
        for window in held.windows:
            account.reserved[window] = account.reserved.get(window, 0) - held.cost
            account.spent[window] = account.spent.get(window, 0) + actual

    @staticmethod
    def _state(account: _Account, window: str) -> WindowState:
        return WindowState(account.spent.get(window, 0), account.reserved.get(window, 0))

    async def reserve(
        self,
        caller: str,
        reservation: str,
        cost: int,
        windows: Sequence[tuple[str, int]],
        *,
        max_in_flight: int,
        now: float,
        expires_at: float,
        live: Sequence[str] = (),
    ) -> Reserved:
        account = self._account(caller, now)
        states = tuple(self._state(account, window) for window, _ in windows)
        in_flight = len(account.held)
        refused = -1 if max_in_flight != NO_LIMIT and in_flight >= max_in_flight else 0
        if refused == 0:
            for index, ((_, limit), state) in enumerate(zip(windows, states, strict=True), 1):
                if state.spent + state.reserved + cost > limit:
                    refused = index
                    break
        if refused == 0:
            ids = tuple(window for window, _ in windows)
            for window in ids:
                account.reserved[window] = account.reserved.get(window, 0) + cost
            account.held[reservation] = _Held(cost, ids, expires_at)
            in_flight += 1
        current = {window for window, _ in windows} | set(live)
        for window in [w for w in account.spent if w not in current]:
            if account.reserved.get(window, 0) <= 0:
                account.spent.pop(window, None)
                account.reserved.pop(window, None)
        return Reserved(refused, in_flight, states)

    async def settle(self, caller: str, reservation: str, actual: int, *, now: float) -> None:
        account = self._accounts.get(caller)
        if account is not None:
            self._end(account, reservation, actual)

    async def usage(
        self, caller: str, windows: Sequence[str], *, now: float
    ) -> tuple[int, tuple[WindowState, ...]]:
        account = self._account(caller, now)
        return len(account.held), tuple(self._state(account, window) for window in windows)

    async def aclose(self) -> None:
        return None
