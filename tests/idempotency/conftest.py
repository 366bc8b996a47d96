"""Fixtures of the idempotency tests: the process-level ones are the lifecycle tests'."""

from __future__ import annotations

from tests.lifecycle.conftest import spawn

__all__ = ["spawn"]
