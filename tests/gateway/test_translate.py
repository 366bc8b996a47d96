"""Pure translation: exactly the set fields go out; the documented shape comes back."""

from __future__ import annotations

from typing import Any

import pytest

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.errors import UpstreamBadResponse
from gateway.translate import request_to_json, response_from_body, response_from_json
from tests.contract_samples import REQUEST_FIELDS, every_field_set, sample_value

SETTINGS = {
    "model_id": "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b",
    "scheduler_id": "6fb13b76-9900-4fa4-abf8-8f843e034a7f",
    "width": 512,
    "height": 768,
    "num_outputs": 2,
    "guidance_scale": 7,
    "inference_steps": 25,
    "seed": 42,
}


def good_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "outputs": [
            {"id": "a", "url": "https://b/a.jpeg", "image_url": "https://b/a.jpeg"},
            {"id": "b", "url": "https://b/b.jpeg"},
        ],
        "remaining_credits": 98,
        "settings": dict(SETTINGS),
        "queued_response": None,
        "something_new": {"x": 1},
    }
    body.update(changes)
    return body


def test_unset_fields_are_left_out() -> None:
    assert request_to_json(generation_pb2.GenerationRequest(prompt="p")) == {"prompt": "p"}


def test_zero_values_that_are_set_are_sent() -> None:
    request = generation_pb2.GenerationRequest(
        prompt="p", seed=0, negative_prompt="", prompt_strength=0
    )
    assert request_to_json(request) == {
        "prompt": "p",
        "seed": 0,
        "negative_prompt": "",
        "prompt_strength": 0.0,
    }


def test_every_field_keeps_its_rest_name_and_a_clean_float() -> None:
    request = generation_pb2.GenerationRequest(
        prompt="p",
        model_id="m",
        width=512,
        height=768,
        negative_prompt="n",
        num_outputs=3,
        guidance_scale=7.1,
        inference_steps=30,
        scheduler_id="s",
        seed=2**40,
        init_image_url="https://x/y.png",
        prompt_strength=0.3,
    )
    body = request_to_json(request)
    assert set(body) == {field.name for field in REQUEST_FIELDS}
    # float32 7.1 is 7.099999904632568; the body says what the caller wrote.
    assert body["guidance_scale"] == 7.1
    assert body["prompt_strength"] == 0.3
    assert body["seed"] == 2**40


@pytest.mark.parametrize("field", REQUEST_FIELDS, ids=lambda f: f.name)
def test_every_field_of_the_contract_reaches_the_body(field: Any) -> None:
    """Derived from the .proto: a field added there fails here until translation sends it
    under its REST name with the caller's value."""
    body = request_to_json(every_field_set())
    assert body[field.name] == pytest.approx(sample_value(field))
    changed = every_field_set(**{field.name: sample_value(field, other=True)})
    assert request_to_json(changed)[field.name] == pytest.approx(sample_value(field, other=True))
    if field.has_presence:
        unset = every_field_set()
        unset.ClearField(field.name)
        assert field.name not in request_to_json(unset)


def test_response_maps_outputs_settings_and_tolerates_extra_fields() -> None:
    response = response_from_json(good_body())
    assert [(o.id, o.url, o.image_url) for o in response.outputs] == [
        ("a", "https://b/a.jpeg", "https://b/a.jpeg"),
        ("b", "https://b/b.jpeg", "https://b/b.jpeg"),
    ]
    assert response.remaining_credits == 98
    assert response.settings.width == 512
    assert response.settings.seed == 42
    assert response.settings.HasField("seed")
    assert not response.settings.HasField("init_image_url")
    assert not response.settings.HasField("prompt_strength")


def test_empty_outputs_are_a_valid_answer() -> None:
    assert len(response_from_json(good_body(outputs=[])).outputs) == 0


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "text",
        good_body(outputs="nope"),
        good_body(outputs=[{"id": 1, "url": "u"}]),
        good_body(outputs=[{"id": "a"}]),
        good_body(outputs=["a"]),
        good_body(remaining_credits="lots"),
        good_body(remaining_credits=None),
        good_body(settings=None),
        good_body(settings={**SETTINGS, "width": "512"}),
        good_body(settings={**SETTINGS, "width": 2**40}),
        good_body(settings={**SETTINGS, "inference_steps": 2.5}),
        {"outputs": []},
    ],
)
def test_malformed_bodies_raise(payload: Any) -> None:
    with pytest.raises(UpstreamBadResponse):
        response_from_json(payload)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"outputs": [], "remaining_credits": NaN}',
        b'{"outputs": [], "remaining_credits": 1, "ignored": Infinity}',
        b'{"outputs": [], "remaining_credits": 1, "ignored": 1e400}',
        '{"outputs": []}'.encode("utf-16"),
        b"\xef\xbb\xbf" + b'{"outputs": []}',
        b'{"outputs": [], "remaining_credits": 1, "x": "\xff"}',
        b'{"outputs": [{"id": "\\ud800", "url": "u"}], "remaining_credits": 1}',
        b'{"outputs": [], "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
    ],
)
def test_bodies_that_are_not_json_raise_as_charged(body: bytes) -> None:
    with pytest.raises(UpstreamBadResponse, match="not JSON") as raised:
        response_from_body(body)
    assert "may have been charged" in str(raised.value)


@pytest.mark.parametrize("seed", ["18446744073709551616", "-9223372036854775809", "1" + "0" * 30])
def test_integers_past_64_bits_are_out_of_range(seed: str) -> None:
    import json

    body = json.dumps(good_body()).replace('"seed": 42', f'"seed": {seed}').encode()
    with pytest.raises(UpstreamBadResponse, match=r"settings\.seed` is out of range"):
        response_from_body(body)


def test_integer_settings_take_whole_numbers_in_range_and_nothing_else() -> None:
    settings = {**SETTINGS, "width": 512.0, "height": -(2**31), "seed": 2**63 - 1}
    parsed = response_from_json(good_body(settings=settings)).settings
    assert (parsed.width, parsed.height, parsed.seed) == (512, -(2**31), 2**63 - 1)
    for key, bad in (("width", True), ("width", 2**31), ("height", -(2**31) - 1), ("seed", 2**63)):
        with pytest.raises(UpstreamBadResponse, match=f"settings.{key}"):
            response_from_json(good_body(settings={**SETTINGS, key: bad}))


def test_a_body_parses_as_its_json() -> None:
    import json

    body = json.dumps(good_body()).encode()
    assert response_from_body(body) == response_from_json(good_body())


def test_every_field_sent_is_one_the_upstream_reads() -> None:
    """Not circular: the emulator's list of REST fields follows the upstream's request
    struct (docs/upstream-api.md#request-body), not the .proto."""
    from emulator.validation import REST_FIELDS

    assert set(request_to_json(every_field_set())) <= REST_FIELDS
