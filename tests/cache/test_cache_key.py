"""Cache keys (pure): what decides the image decides the key, and nothing secret is in it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.account import account_scope
from gateway.cache_key import (
    cache_key,
    canonical_form,
    format_prompt,
    is_cacheable,
)
from tests.conftest import ACCOUNT_KEY, OTHER_KEY
from tests.contract_samples import REQUEST_FIELDS, every_field_set, sample_value

SCOPE = account_scope(ACCOUNT_KEY, "https://api.stablecog.com")


def key(**fields: Any) -> str:
    fields.setdefault("prompt", "a lighthouse")
    fields.setdefault("seed", 42)
    return cache_key(generation_pb2.GenerationRequest(**fields), SCOPE)


def test_only_explicit_non_negative_seeds_are_cacheable() -> None:
    assert is_cacheable(generation_pb2.GenerationRequest(prompt="p", seed=0))
    assert is_cacheable(generation_pb2.GenerationRequest(prompt="p", seed=2**40))
    assert not is_cacheable(generation_pb2.GenerationRequest(prompt="p"))
    assert not is_cacheable(generation_pb2.GenerationRequest(prompt="p", seed=-1))


@pytest.mark.parametrize(
    ("omitted", "explicit"),
    [
        ({}, {"num_outputs": 2}),
        ({}, {"guidance_scale": 7.0}),
        ({}, {"inference_steps": 30}),
        ({}, {"negative_prompt": ""}),
        ({"prompt": "a  lighthouse\n"}, {"prompt": "a lighthouse"}),
        ({"prompt": " a\tlighthouse "}, {"prompt": "a lighthouse"}),
        (
            {"model_id": "0A99668B-45BD-4F7E-AA9C-F9AAA41EF13B"},
            {"model_id": "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b"},
        ),
        (
            {"init_image_url": "https://x/a.png"},
            {"init_image_url": "https://x/a.png", "prompt_strength": 0.5},
        ),
        ({"prompt_strength": 0.9}, {}),  # ignored without an init image
    ],
)
def test_same_image_same_key(omitted: dict[str, Any], explicit: dict[str, Any]) -> None:
    assert key(**omitted) == key(**explicit)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"seed": 0},
        {"prompt": "a lighthouse at night"},
        {"negative_prompt": "fog"},
        {"num_outputs": 1},
        {"guidance_scale": 7.5},
        {"inference_steps": 31},
        {"width": 512},
        {"height": 512},
        {"model_id": "986d447d-c38b-4218-a2c8-6e0b691f47ec"},
        {"scheduler_id": "6fb13b76-9900-4fa4-abf8-8f843e034a7f"},
        {"init_image_url": "https://x/a.png"},
        {"prompt": "a\x1clighthouse"},  # U+001C is no space to Go's strings.Fields
    ],
)
def test_anything_that_decides_the_image_changes_the_key(change: dict[str, Any]) -> None:
    assert key() != key(**change)


def test_dynamic_defaults_are_not_guessed() -> None:
    # The default model is data upstream, so "omitted" is its own value.
    assert key() != key(model_id="0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b")
    assert key() != key(width=1024, height=1024)


def test_accounts_and_upstreams_never_share_keys() -> None:
    request = generation_pb2.GenerationRequest(prompt="p", seed=1)
    keys = {
        cache_key(request, account_scope(ACCOUNT_KEY, "https://api.stablecog.com")),
        cache_key(request, account_scope(OTHER_KEY, "https://api.stablecog.com")),
        cache_key(request, account_scope(ACCOUNT_KEY, "http://127.0.0.1:8000")),
    }
    assert len(keys) == 3


def test_no_secret_in_scope_or_key() -> None:
    import hashlib

    scope = account_scope(ACCOUNT_KEY, "https://api.stablecog.com")
    k = cache_key(generation_pb2.GenerationRequest(prompt="p", seed=1), scope)
    plain_digest = hashlib.sha256(ACCOUNT_KEY.encode()).hexdigest()
    for text in (scope, k):
        assert ACCOUNT_KEY not in text and ACCOUNT_KEY[3:20] not in text
        assert plain_digest[:16] not in text


def test_format_prompt_matches_the_upstream() -> None:
    assert format_prompt("a\nb \r\n c  ") == b"a b c"
    long = "é" * 600  # 600 runes, 1200 bytes: cut to the first 500 bytes
    assert format_prompt(long) == ("é" * 250).encode()
    assert format_prompt("x" * 500) == b"x" * 500
    assert format_prompt("a\u00a0b\u3000 c\u2028") == b"a b c"
    assert format_prompt("a\x1cb\x1f") == b"a\x1cb\x1f"


def test_canonical_form_fills_static_defaults() -> None:
    form = canonical_form(generation_pb2.GenerationRequest(prompt="p", seed=5))
    assert form["num_outputs"] == 2 and form["inference_steps"] == 30
    assert form["model_id"] == "default" and form["prompt_strength"] is None


@pytest.mark.parametrize("field", REQUEST_FIELDS, ids=lambda f: f.name)
def test_every_field_of_the_contract_decides_the_key(field: Any) -> None:
    """Derived from the .proto: a field added there fails here until the canonical form
    handles it, so two requests for different images never share an entry."""
    base = every_field_set()
    changed = every_field_set(**{field.name: sample_value(field, other=True)})
    assert is_cacheable(base) and is_cacheable(changed)
    assert canonical_form(base) != canonical_form(changed)
    assert cache_key(base, SCOPE) != cache_key(changed, SCOPE)
