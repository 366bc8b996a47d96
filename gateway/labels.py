"""Metric label values: sanitized and bounded, so no caller can grow a series set. Pure."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

OTHER = "other"
UNKNOWN = "unknown"

_LABEL_MAX = 63
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def sanitize_label(raw: str | None) -> str:
    """A label value fit for metrics and logs: at most 63 safe characters, or ''.

    Idempotent, so a value already sanitized maps to itself.
    """
    if raw is None:
        return ""
    return _LABEL_UNSAFE.sub("_", raw.strip())[:_LABEL_MAX]


_LONG_PREFIX = 46  # + "." + 16 hex digits = the 63 characters of a label


def distinct_label(raw: str) -> str:
    """`sanitize_label(raw)`, but distinct for distinct names however long: a name past 63
    characters keeps 46 and a digest of the whole, so two long names (SPIFFE ids) sharing
    their first 63 characters stay two callers. Idempotent, like sanitize_label."""
    raw = raw.strip()
    name = sanitize_label(raw)
    if len(raw) == len(name):  # sanitize_label replaces characters one for one
        return name
    return f"{name[:_LONG_PREFIX]}.{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


class BoundedLabel:
    """Admits the first `limit` distinct values of a label; later ones become `other`."""

    def __init__(self, limit: int, initial: Iterable[str] = ()) -> None:
        self._limit = limit
        self._seen = set(initial)

    def __call__(self, value: str) -> str:
        if value in self._seen or value == OTHER:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value

    def forget(self, value: str) -> None:
        """Free `value`'s place (its series is gone): the next new value may take it."""
        self._seen.discard(value)
