"""The budget collectors (gateway.budgets' BudgetReport), on the gateway's registry.

Labels stay bounded: the `caller` label is a caller the policy file names or the
configured default caller; every other caller counts as `other` in the rejection counter
and has no usage gauges (they would mix unrelated callers' budgets).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.budget_policy import WINDOWS
from gateway.budgets import PolicySource, WindowUsage
from gateway.labels import OTHER

REJECTION_REASONS = (*WINDOWS, "in_flight", "not_permitted")
LEDGER_DECISIONS = ("closed", "open")


class BudgetMetrics:
    """Budget gauges and counters (see the README's metrics table)."""

    def __init__(
        self, registry: CollectorRegistry, policy: PolicySource, *, default_caller: str
    ) -> None:
        self._policy = policy
        self._default_caller = default_caller
        gauge = functools.partial(Gauge, registry=registry)
        counter = functools.partial(Counter, registry=registry)
        per_window = ("caller", "window")
        self.limit = gauge(
            "stablecog_budget_limit_credits",
            "A caller's credit budget per window (the policy file).",
            per_window,
        )
        self.spent = gauge(
            "stablecog_budget_spent_credits",
            "Credits a caller has spent in its current window (shared by replicas with Redis).",
            per_window,
        )
        self.reserved = gauge(
            "stablecog_budget_reserved_credits",
            "Credits reserved by a caller's generations in flight, in its current window.",
            per_window,
        )
        self.remaining = gauge(
            "stablecog_budget_remaining_credits",
            "Credits a caller may still reserve in its current window.",
            per_window,
        )
        self.in_flight = gauge(
            "stablecog_budget_generations_in_flight",
            "A caller's reserved paid calls (generations and upscales) in flight (all replicas, "
            "with Redis); named for generations, kept for dashboards.",
            ("caller",),
        )
        self.rejections = counter(
            "stablecog_budget_rejections_total",
            "Calls refused by a budget, by caller and reason (a window, in_flight, not_permitted).",
            ("caller", "reason"),
        )
        self.reservations_held = gauge(
            "stablecog_budget_reservations_in_flight",
            "Budget reservations this gateway holds for calls it is sending upstream.",
        )
        self.policy_valid = gauge(
            "stablecog_budget_policy_valid",
            "1 if the budget policy file's current content is valid, 0 if the last change "
            "was refused (the previous policy stays in force).",
        )
        self.policy_valid.set(1)
        self.ledger_failures = counter(
            "stablecog_budget_store_failures_total",
            "Budget operations the Redis ledger failed, by what was done: closed (refused) "
            "or open (served against the local ledger).",
            ("decision",),
        )
        for decision in LEDGER_DECISIONS:
            self.ledger_failures.labels(decision)
        for caller in self._named():
            for reason in REJECTION_REASONS:
                self.rejections.labels(caller, reason)

    def _named(self) -> set[str]:
        return {*self._policy.current().callers, self._default_caller}

    def _label(self, caller: str) -> str:
        return caller if caller in self._named() else OTHER

    def policy_validity(self, valid: bool) -> None:
        self.policy_valid.set(1 if valid else 0)

    # --- gateway.budgets.BudgetReport ---

    def usage(self, caller: str, windows: Sequence[WindowUsage], in_flight: int) -> None:
        label = self._label(caller)
        if label == OTHER:
            return
        self.in_flight.labels(label).set(in_flight)
        for use in windows:
            labels = (label, use.window)
            self.limit.labels(*labels).set(use.limit)
            self.spent.labels(*labels).set(use.spent)
            self.reserved.labels(*labels).set(use.reserved)
            self.remaining.labels(*labels).set(max(use.limit - use.spent - use.reserved, 0))

    def rejected(self, caller: str, reason: str) -> None:
        self.rejections.labels(self._label(caller), reason).inc()

    def ledger_failed(self, decision: str) -> None:
        self.ledger_failures.labels(decision).inc()

    def reservations(self, delta: int) -> None:
        self.reservations_held.inc(delta)
