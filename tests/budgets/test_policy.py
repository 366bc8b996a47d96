"""The policy file's schema (gateway.budget_policy): the README's complete example parses to
what it says, anything malformed is refused with a reason, and windows are UTC calendar
windows."""

from __future__ import annotations

import re

import pytest

from gateway.budget_policy import Limits, parse_policy, window_id, window_reset
from tests.processes import ROOT


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("The policy file (YAML") :]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None
    return match[1]


def test_the_readme_example_parses_to_what_it_says() -> None:
    policy = parse_policy(readme_example())
    assert policy.default == Limits(credits={"day": 100}, max_in_flight=4)
    assert policy.callers["search"] == Limits(
        credits={"hour": 200, "day": 2000, "month": 40000}, max_in_flight=20
    )
    assert policy.limits_for("internal-tools") == Limits()  # unlimited, explicitly
    assert policy.limits_for("stranger") == policy.default


def test_without_a_default_unlisted_callers_have_no_budget() -> None:
    assert parse_policy("callers: {a: {credits: {day: 1}}}").limits_for("b") is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("callers: [a, b]", "must map"),
        ("callers: {a: {credits: {week: 5}}}", "unknown window"),
        ("callers: {a: {credits: {day: -1}}}", "whole number"),
        ("callers: {a: {credits: {day: lots}}}", "whole number"),
        ("callers: {a: {credits: {day: 1.5}}}", "whole number"),
        ("callers: {a: {max_in_flight: true}}", "whole number"),
        ("callers: {a: {credit: {day: 1}}}", "unknown keys"),
        ("caller: {}", "unknown keys"),
        ("- a", "expected a mapping"),
        ("callers: {a: [", "not YAML"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_policy(text)


def test_windows_are_utc_calendar_windows() -> None:
    wall = 1_706_745_599.5  # 2024-01-31 23:59:59.5 UTC
    assert [window_id(w, wall) for w in ("minute", "hour", "day", "month")] == [
        "minute:202401312359", "hour:2024013123", "day:20240131", "month:202401",
    ]  # fmt: skip
    for window in ("minute", "hour", "day", "month"):
        assert window_reset(window, wall) == 1_706_745_600.0
    assert window_reset("month", 1_706_745_600.0) == 1_709_251_200.0  # 2024-03-01 (leap Feb)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        # An edit that empties a block (its lines commented out) must not mean "unlimited".
        ("default:\ncallers: {a: {credits: {day: 1}}}", "default: expected a mapping"),
        ("callers:\n  a:\n  #  credits: {day: 1}\n", r"callers\.a: expected a mapping"),
        ("callers: {a: {credits: }}", r"callers\.a\.credits: expected a mapping"),
        # YAML keeps the last of two equal keys silently; the policy refuses them.
        ("callers:\n  a: {credits: {day: 1}}\n  a: {}\n", "twice"),
        ("callers: {a: {credits: {day: 1, day: 900}}}", "twice"),
        ("default: {}\ndefault: {credits: {day: 1}}\n", "twice"),
        # Limits past what GetBudget and the Lua ledger hold exactly.
        ("callers: {a: {max_in_flight: 4294967296}}", "at most"),
        ("callers: {a: {credits: {day: 9007199254740993}}}", "at most"),
    ],
)
def test_an_empty_duplicate_or_unbounded_entry_never_falls_open(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_policy(text)


def test_anchors_and_merge_keys_still_work() -> None:
    policy = parse_policy(
        "callers:\n  a: &std {credits: {day: 10}, max_in_flight: 1}\n"
        "  b:\n    <<: *std\n    max_in_flight: 3\n"
    )
    assert policy.callers["b"] == Limits(credits={"day": 10}, max_in_flight=3)


def test_a_long_caller_name_matches_the_identity_its_certificate_gives() -> None:
    from gateway.identity import Identifier, IdentityPolicy

    spiffe = "spiffe://cluster.local/ns/production/sa/image-generation-service-canary"
    policy = parse_policy(f"callers:\n  '{spiffe}': {{credits: {{day: 5}}}}\n")
    identify = Identifier(IdentityPolicy(mode="mtls", x_caller="ignore"))
    auth = {"transport_security_type": [b"ssl"], "peer_uri": [spiffe.encode()]}
    assert policy.limits_for(identify({}, auth).principal) == Limits(credits={"day": 5})
    assert policy.limits_for(spiffe[:63]) is None
