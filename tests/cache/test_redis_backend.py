"""The Redis boundary: every redis-py error has its own row in the conversion table, and
Redis keeps balances by the same rule as gateway.balance (checked against a real Redis)."""

from __future__ import annotations

import itertools

import pytest
import redis.exceptions as rx

from gateway.balance import Balance, BalanceBook
from gateway.cache_backend import BackendMisbehaved, BackendUnavailable
from gateway.cache_redis import REDIS_ERRORS, RedisBackend, converted, failure_for
from tests.fixtures import all_subclasses
from tests.services import RedisServer


def test_every_redis_error_has_its_own_row() -> None:
    missing = {
        f"{cls.__module__}.{cls.__name__}"
        for cls in all_subclasses(rx.RedisError) | {rx.RedisError}
        if cls.__module__.startswith("redis") and cls not in REDIS_ERRORS
    }
    assert not missing, f"add rows to gateway.cache_redis.REDIS_ERRORS: {missing}"


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (rx.ConnectionError("refused"), BackendUnavailable),
        (rx.TimeoutError("slow"), BackendUnavailable),
        (rx.BusyLoadingError("loading"), BackendUnavailable),
        (ConnectionResetError(), BackendUnavailable),
        (TimeoutError(), BackendUnavailable),
        (rx.ResponseError("WRONGTYPE"), BackendMisbehaved),
        (rx.NoScriptError("no script"), BackendMisbehaved),
    ],
)
def test_foreign_errors_become_backend_failures(error: Exception, failure: type) -> None:
    assert failure_for(error) is failure
    with pytest.raises(failure), converted():
        raise error


def test_anything_else_a_redis_call_raises_is_the_backend_misbehaving() -> None:
    # converted() wraps redis-py calls only, so whatever they raise is the backend's.
    with pytest.raises(BackendMisbehaved), converted():
        raise RuntimeError("redis-py re-raises what it did not expect")


async def test_cancellation_is_not_converted() -> None:
    import asyncio

    with pytest.raises(asyncio.CancelledError), converted():
        raise asyncio.CancelledError


async def test_redis_keeps_the_newest_balance_like_the_python_rule(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(redis_server.url, timeout=2.0)
    try:
        offers = [
            Balance(90, observed_at=200.0),
            Balance(95, observed_at=100.0),
            Balance(80, observed_at=200.0),
            Balance(70, observed_at=300.5),
            Balance(75, observed_at=300.25),
        ]
        for order, permutation in enumerate(itertools.permutations(offers, 3)):
            scope = f"scope-{order}"
            book: BalanceBook[str] = BalanceBook()
            for balance in permutation:
                book.offer(scope, balance)
                await backend.shared.offer_balance(scope, balance)
            assert await backend.shared.get_balance(scope) == book.get(scope), permutation
    finally:
        await backend.entries.aclose()
