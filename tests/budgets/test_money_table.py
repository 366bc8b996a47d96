"""The table that decides whether a failed call keeps its reservation covers every error,
and says "kept" exactly for the errors whose words say money may have moved."""

from __future__ import annotations

from gateway import errors
from gateway.budgets import MONEY_MAY_HAVE_MOVED, may_have_been_charged
from tests.fixtures import all_subclasses


def test_every_error_class_has_a_row() -> None:
    assert set(MONEY_MAY_HAVE_MOVED) == all_subclasses(errors.GatewayError) - {errors.UpstreamError}


def test_the_may_have_been_charged_errors_keep_and_the_refunded_release() -> None:
    kept = {cls.__name__ for cls, keep in MONEY_MAY_HAVE_MOVED.items() if keep}
    assert kept == {
        "CallTimedOut", "UpstreamTimedOut", "GatewayInternal", "UpstreamInternal",
        "UpstreamConnectionLost", "GenerationAbandoned", "UpstreamBadResponse",
    }  # fmt: skip
    assert not may_have_been_charged(errors.WorkerFailed("refunded"))
    assert may_have_been_charged(RuntimeError("a bug: assume the worst"))
