"""Accounts and their credits, keyed by the SHA-256 of the API token (as sc-go stores them).

Cost is `num_outputs` credits, taken before the worker runs and refunded in full when the
worker fails or times out (docs/upstream-api.md#credits). Operations are atomic under a lock,
so the ledger can be read from another thread while the event loop serves requests.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from dataclasses import dataclass

TOKEN_PATTERN = re.compile(r"sc-[0-9a-f]{64}")
_USER_NAMESPACE = uuid.UUID("5f0c3f5e-8c1a-4f0e-9b53-2a8d7c1e6b90")


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a token: what is stored and recorded, never the token itself."""
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def is_well_formed_token(token: str) -> bool:
    """`sc-` followed by 64 lowercase hex characters, as sc-go generates them."""
    return TOKEN_PATTERN.fullmatch(token) is not None


@dataclass
class Account:
    """One user with one API token."""

    token_sha256: str
    user_id: uuid.UUID
    initial_credits: int
    balance: int

    @property
    def owner_prefix(self) -> str:
        """The prefix of this user's `s3://` upload keys: sha256(user ID) + "/"."""
        return hashlib.sha256(str(self.user_id).encode()).hexdigest() + "/"


class InsufficientCredits(Exception):
    """The deduction failed; the server answers `insufficient_credits`."""


class Ledger:
    """Balances of all accounts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._accounts: dict[str, Account] = {}

    def add(self, token: str, credits: int) -> Account:
        """Create the account, or reset an existing one to `credits`."""
        if credits < 0:
            raise ValueError("credits must be >= 0")
        digest = token_sha256(token)
        with self._lock:
            account = Account(
                token_sha256=digest,
                user_id=uuid.uuid5(_USER_NAMESPACE, digest),
                initial_credits=credits,
                balance=credits,
            )
            self._accounts[digest] = account
            return account

    def get(self, digest: str) -> Account | None:
        """The account for a token hash."""
        with self._lock:
            return self._accounts.get(digest)

    def get_or_create(self, token: str, credits: int) -> Account:
        """The token's account, created with `credits` if it has none."""
        digest = token_sha256(token)
        with self._lock:
            account = self._accounts.get(digest)
        return account if account is not None else self.add(token, credits)

    def balance(self, digest: str) -> int:
        """Current balance; KeyError for an unknown account."""
        with self._lock:
            return self._accounts[digest].balance

    def deduct(self, digest: str, amount: int) -> int:
        """Take `amount` credits and return the balance left.

        As sc-go's `DeductCreditsFromUser`, deducting 0 counts as a failure.
        """
        with self._lock:
            account = self._accounts[digest]
            if amount <= 0 or account.balance < amount:
                raise InsufficientCredits
            account.balance -= amount
            return account.balance

    def refund(self, digest: str, amount: int) -> None:
        """Give `amount` credits back."""
        with self._lock:
            self._accounts[digest].balance += amount

    def restore_all(self) -> None:
        """Put every balance back to the amount the account was created with."""
        with self._lock:
            for account in self._accounts.values():
                account.balance = account.initial_credits
