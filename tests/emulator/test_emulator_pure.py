"""Pure helpers: Go-compatible JSON, the fault queue, the rate limiter, the ledger, config."""

from __future__ import annotations

from uuid import UUID

import pytest

from emulator.accounts import InsufficientCredits, Ledger, is_well_formed_token, token_sha256
from emulator.config import EmulatorConfig, parse_listen
from emulator.faults import FaultMode, FaultQueue, make_fault
from emulator.gojson import Float32, dumps, format_float
from emulator.ratelimit import SlidingWindowLimiter


@pytest.mark.parametrize(
    ("value", "bits", "text"),
    [
        (7.1, 32, "7.1"),
        (0.5, 32, "0.5"),
        (30.0, 32, "30"),
        (0.1 + 0.2, 64, "0.30000000000000004"),
        (123456789.0, 64, "123456789"),
        (1e-7, 64, "1e-7"),
        (1.5e-10, 64, "1.5e-10"),
        (1e21, 64, "1e+21"),
        (0.00001, 64, "0.00001"),
        (-2.5, 64, "-2.5"),
        (0.0, 64, "0"),
    ],
)
def test_floats_are_formatted_like_go(value: float, bits: int, text: str) -> None:
    assert format_float(value, bits) == text


def test_dumps_is_compact_html_escaped_and_newline_terminated() -> None:
    body = dumps({"a": "<b>&\u2028", "f": Float32(7.1), "u": UUID(int=1), "l": [True, None]})
    assert body == (
        b'{"a":"\\u003cb\\u003e\\u0026\\u2028","f":7.1,'
        b'"u":"00000000-0000-0000-0000-000000000001","l":[true,null]}\n'
    )


def test_faults_apply_in_order_with_their_counts() -> None:
    queue = FaultQueue()
    queue.inject("rate_limit", count=2)
    queue.inject("worker_failure", error="TIMEOUT")
    taken = [queue.take() for _ in range(4)]
    assert [f.mode if f else None for f in taken] == [
        FaultMode.RATE_LIMIT,
        FaultMode.RATE_LIMIT,
        FaultMode.WORKER_FAILURE,
        None,
    ]
    assert taken[2] is not None and taken[2].str_param("error") == "TIMEOUT"


def test_fault_parameters_get_defaults_and_are_checked() -> None:
    assert make_fault("worker_failure", {}).str_param("error") == "runpod_failed"
    assert make_fault("http_status", {"status": 504}).str_param("body") == "error code: 504"
    assert make_fault("delay", {"seconds": 2}).float_param("seconds") == 2.0
    with pytest.raises(ValueError, match="count"):
        FaultQueue().inject("banned", count=0)


@pytest.mark.parametrize(
    ("mode", "params", "message"),
    [
        ("no_such_mode", {}, "unknown fault mode"),
        ("banned", {"extra": 1}, "takes no parameter extra"),
        ("http_status", {"status": 700}, "100-599"),
        ("http_status", {"status": "502"}, "status must be int"),
        ("malformed_success", {"variant": "odd"}, "variant must be one of"),
        ("filter_outputs", {"drop": -1}, "drop must be >= 0"),
        ("delay", {"seconds": -1}, "seconds must be >= 0"),
        ("drop_connection", {"charge": 1}, "charge must be bool"),
    ],
)
def test_bad_fault_parameters_are_refused(
    mode: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_fault(mode, params)


def test_rate_limiter_counts_a_sliding_window() -> None:
    now = [1000.0]
    limiter = SlidingWindowLimiter(3, clock=lambda: now[0])
    decisions = [limiter.check("ip") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "2",
        "X-RateLimit-Reset": "1001",
    }
    assert limiter.check("other ip").allowed
    now[0] = 1000.5  # same window: refused requests were not counted, still full
    assert not limiter.check("ip").allowed
    now[0] = 1001.5  # half the previous window still weighs: 3 * 0.5 = 1.5, rounds to 2
    assert [limiter.check("ip").allowed for _ in range(2)] == [True, False]
    now[0] = 1003.0
    assert limiter.check("ip").allowed


def test_ledger_deducts_refunds_and_treats_zero_as_insufficient() -> None:
    ledger = Ledger()
    account = ledger.add("sc-token", 5)
    assert account.token_sha256 == token_sha256("sc-token")
    assert ledger.deduct(account.token_sha256, 2) == 3
    with pytest.raises(InsufficientCredits):
        ledger.deduct(account.token_sha256, 4)
    with pytest.raises(InsufficientCredits):
        ledger.deduct(account.token_sha256, 0)
    ledger.refund(account.token_sha256, 2)
    assert ledger.balance(account.token_sha256) == 5
    ledger.deduct(account.token_sha256, 5)
    ledger.restore_all()
    assert ledger.balance(account.token_sha256) == 5


def test_token_format() -> None:
    assert is_well_formed_token("sc-" + "0123456789abcdef" * 4)
    assert not is_well_formed_token("sc-" + "0123456789ABCDEF" * 4)
    assert not is_well_formed_token("sc-" + "0" * 63)


def test_config_rejects_bad_values_and_limits_runtime_changes() -> None:
    with pytest.raises(ValueError, match="latency_seconds"):
        EmulatorConfig(latency_seconds=-1)
    with pytest.raises(ValueError, match="queue_limit"):
        EmulatorConfig(queue_limit=-1)
    with pytest.raises(ValueError, match="public_url"):
        EmulatorConfig(public_url="ftp://x")
    config = EmulatorConfig().with_runtime_changes({"latency_seconds": 0.25})
    assert config.latency_seconds == 0.25
    with pytest.raises(ValueError, match="public_url"):
        config.with_runtime_changes({"public_url": "http://x"})
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:8000") == ("::1", 8000)
    for bad in ("8000", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match=r"PORT|port"):
            parse_listen(bad)


def test_rate_limiter_shares_one_count_between_route_limits() -> None:
    limiter = SlidingWindowLimiter(10, clock=lambda: 1000.0)
    assert [limiter.check("ip", 2).allowed for _ in range(3)] == [True, True, False]
    wider = limiter.check("ip", 4)  # the refused request was not counted: 2 so far
    assert (wider.allowed, wider.limit, wider.remaining) == (True, 4, 1)
    narrow = limiter.check("ip", 2)
    assert (narrow.allowed, narrow.limit, narrow.remaining) == (False, 2, -1)
    assert limiter.check("ip").remaining == 6  # the limiter's own limit, 10


def test_config_image_url_hosts() -> None:
    config = EmulatorConfig(image_url_hosts=(" Example.COM ", "[2001:DB8::1]", "example.com", ""))
    assert config.image_url_hosts == ("example.com", "2001:db8::1")
    assert EmulatorConfig().image_url_hosts == ()
    assert EmulatorConfig().image_fetch_timeout_seconds == 5.0
    changed = config.with_runtime_changes({"image_url_hosts": ["cdn.test"]})
    assert changed.image_url_hosts == ("cdn.test",)
    assert changed.runtime_dict()["image_url_hosts"] == ["cdn.test"]
    for bad in ("example.com:8080", "http://example.com", "a b", "x/y", "user@host"):
        with pytest.raises(ValueError, match="image_url_hosts"):
            EmulatorConfig(image_url_hosts=(bad,))
    with pytest.raises(ValueError, match="image_url_hosts"):
        EmulatorConfig(image_url_hosts="example.com")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_fetch_timeout_seconds"):
        EmulatorConfig(image_fetch_timeout_seconds=-1)
