"""An API key as the gateway handles it: never shown, named by keyed digests.

`fingerprint` labels the account in metrics and logs; `cache_scope` scopes cache
entries to the account and the upstream. Both are computed once per key object; the
key itself cannot be recovered from either.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import cached_property

_FINGERPRINT_KEY = b"stablecog-gateway account fingerprint v1"
_SCOPE_KEY = b"stablecog-gateway cache scope v1"


def account_fingerprint(api_key: str) -> str:
    """A short, non-reversible label for an account's key (for metrics and logs)."""
    return hmac.new(_FINGERPRINT_KEY, api_key.encode(), hashlib.sha256).hexdigest()[:12]


def account_scope(api_key: str, upstream_url: str) -> str:
    """A keyed digest naming the account and upstream; the key cannot be recovered from it."""
    message = f"{upstream_url}\n{api_key}".encode()
    return hmac.new(_SCOPE_KEY, message, hashlib.sha256).hexdigest()[:32]


class ApiKey:
    """A Stablecog key, where it came from, and its digests. `repr` never shows the key."""

    def __init__(self, value: str, *, configured: bool, upstream_url: str = "") -> None:
        self.value = value
        self.configured = configured
        self.upstream_url = upstream_url

    @cached_property
    def fingerprint(self) -> str:
        return account_fingerprint(self.value)

    @cached_property
    def cache_scope(self) -> str:
        return account_scope(self.value, self.upstream_url)

    @property
    def authorization(self) -> str:
        """The `authorization` header value for the upstream."""
        return f"Bearer {self.value}"

    def __repr__(self) -> str:
        return f"ApiKey(configured={self.configured}, fingerprint={self.fingerprint})"
