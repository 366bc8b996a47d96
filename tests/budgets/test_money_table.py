"""Whether a failed call keeps its reservation follows each error class's own
`may_have_been_charged` (gateway.errors), and anything unknown keeps it."""

from __future__ import annotations

from gateway import errors
from gateway.budgets import may_have_been_charged
from tests.fixtures import all_subclasses


def test_a_failed_call_keeps_its_reservation_exactly_when_its_error_may_have_charged() -> None:
    for cls in all_subclasses(errors.GatewayError):
        error = cls("x")
        assert may_have_been_charged(error) is cls.may_have_been_charged, cls.__name__
    assert not may_have_been_charged(errors.WorkerFailed("refunded"))
    assert may_have_been_charged(errors.UpstreamConnectionLost("sent, no answer"))
    assert may_have_been_charged(RuntimeError("a bug: assume the worst"))
