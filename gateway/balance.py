"""Credit balances and the one rule for which of two is newer.

The upstream deducts credits when a generation starts, so of two balances the one
from the call that started later is the newer, whichever answer arrived last. The
cache (per account scope, in-process and in Redis) and the metrics (per account
fingerprint) keep balances by this rule; Redis applies it in Lua on the same JSON
form (`Balance.to_json`), and a test checks the two agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class Balance:
    """Credits left on an account, seen by a call that started at `observed_at` (wall clock)."""

    credits: float
    observed_at: float

    def supersedes(self, other: Balance | None) -> bool:
        """True when this balance should replace `other` (ties: the later report wins)."""
        return other is None or self.observed_at >= other.observed_at

    def to_json(self) -> str:
        return json.dumps([self.observed_at, self.credits])

    @classmethod
    def from_json(cls, raw: str | bytes) -> Balance | None:
        """The balance `to_json` wrote; None when the value is unreadable."""
        try:
            observed_at, credits = json.loads(raw)
            return cls(credits=float(credits), observed_at=float(observed_at))
        except (ValueError, TypeError):
            return None


class BalanceBook(Generic[K]):
    """The newest balance per key (an account scope or fingerprint)."""

    def __init__(self) -> None:
        self._balances: dict[K, Balance] = {}

    def offer(self, key: K, balance: Balance) -> bool:
        """Keep `balance` if it is the newest for `key`; True when it was kept."""
        if balance.supersedes(self._balances.get(key)):
            self._balances[key] = balance
            return True
        return False

    def get(self, key: K) -> Balance | None:
        return self._balances.get(key)

    def forget(self, key: K) -> None:
        self._balances.pop(key, None)
