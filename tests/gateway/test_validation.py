"""The documented constraints, each boundary on both sides (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.validation import RequestValidator
from tests.fixtures import request
from tests.gateway.cases import BOUNDARIES

VALIDATOR = RequestValidator()


@pytest.mark.parametrize(("fields", "expected"), BOUNDARIES, ids=[str(c[0]) for c in BOUNDARIES])
def test_boundary(fields: dict[str, Any], expected: list[str]) -> None:
    violations = VALIDATOR.violations(request(**fields))
    assert sorted(v.field for v in violations) == sorted(expected)
    for violation in violations:
        assert violation.field in violation.description


def test_check_lists_every_violation_at_once() -> None:
    with pytest.raises(InvalidRequest) as caught:
        VALIDATOR.check(request(width=248, height=1025, num_outputs=0))
    fields = sorted(v.field for v in caught.value.violations)
    assert fields == ["height", "height", "num_outputs", "width"]
    assert caught.value.reason == "INVALID_REQUEST"


def test_pixel_steps_description_names_the_rule() -> None:
    (violation,) = VALIDATOR.violations(request(width=1024, height=1024, inference_steps=31))
    assert violation.field == "inference_steps"
    assert "1024 * 1024 * 30" in violation.description


def test_valid_request_passes() -> None:
    VALIDATOR.check(request(width=512, height=768, num_outputs=4, seed=0))


def test_a_remembered_valid_request_lets_no_invalid_one_through() -> None:
    validator = RequestValidator()
    valid = request(width=512, height=768, seed=3)
    for _ in range(2):  # the second check is answered from the memo of valid requests
        validator.check(valid)
    for fields in ({"width": 248, "height": 768, "seed": 3}, {"prompt": "", "seed": 3}):
        with pytest.raises(InvalidRequest):
            validator.check(request(**fields))
    validator.check(valid)


def test_the_memo_of_valid_requests_is_bounded() -> None:
    from gateway import validation

    validator = RequestValidator()
    for seed in range(validation.VALID_MEMO_ENTRIES + 10):
        validator.check(request(seed=seed))
    assert len(validator._valid) <= validation.VALID_MEMO_ENTRIES
    validator.check(request(prompt="x" * validation.VALID_MEMO_MAX_BYTES))
    assert all(len(raw) <= validation.VALID_MEMO_MAX_BYTES for _, raw in validator._valid)
