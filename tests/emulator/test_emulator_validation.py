"""The create request's decoding, defaults, validation order and messages (reference §1)."""

from __future__ import annotations

from uuid import UUID

import pytest

from emulator import validation
from emulator.validation import (
    GenerationPlan,
    JsonParseError,
    RequestValidationError,
    ServerPanic,
    format_prompt,
    parse_go_uuid,
    parse_request,
    plan_generation,
)
from tests.emulator.emulator_support import (
    DDPM,
    FLUX,
    K_EULER,
    K_EULER_ANCESTRAL,
    KANDINSKY_21,
    KANDINSKY_22,
)


def plan(body: bytes, seed: int = 1234) -> GenerationPlan:
    return plan_generation(body, lambda: seed)


def error_of(body: bytes) -> str:
    with pytest.raises(RequestValidationError) as caught:
        plan(body)
    return str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b'{"prompt": "a"} trailing',
        b"[]",
        b'"text"',
        b"42",
        b'{"width": 1.5}',
        b'{"width": 512.0}',
        b'{"width": 1e3}',
        b'{"width": "512"}',
        b'{"width": true}',
        b'{"width": 2147483648}',
        b'{"height": -2147483649}',
        b'{"num_outputs": 99999999999999999999999999999999999999999999999999999999999999999999}',
        b'{"seed": 9223372036854775808}',
        b'{"seed": 1.5}',
        b'{"guidance_scale": "7"}',
        b'{"guidance_scale": 1e39}',
        b'{"guidance_scale": NaN}',
        b'{"prompt_strength": Infinity}',
        b'{"model_id": "not-a-uuid"}',
        b'{"model_id": ""}',
        b'{"model_id": 5}',
        b'{"scheduler_id": "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13"}',
        b'{"scheduler_id": "0a99668b+45bd-4f7e-aa9c-f9aaa41ef13b"}',
        b'{"prompt": 5}',
        b'{"prompt": ["a"]}',
        b'{"submit_to_gallery": "true"}',
        b'{"WIDTH": 1.5}',
        b'{"ignored": 1, "width": 512, "width": "x"}',
    ],
)
def test_bodies_json_unmarshal_rejects_are_json_parse_errors(body: bytes) -> None:
    with pytest.raises(JsonParseError):
        parse_request(body)


def test_null_body_unknown_fields_and_nulls_are_accepted() -> None:
    assert parse_request(b"null") == parse_request(b"{}")
    request = parse_request(
        b'{"prompt_strengtht": 0.3, "extra": [1, {"x": null}, 1e999], "width": null, '
        b'"height": 512, "prompt": null, "model_id": null}'
    )
    assert request.prompt_strength is None  # the OpenAPI file's typo is ignored
    assert request.width is None and request.model_id is None
    assert request.height == 512 and request.prompt == ""


def test_keys_match_case_insensitively_and_the_last_duplicate_wins() -> None:
    request = parse_request(b'{"Width": 300, "WIDTH": 512, "Num_Outputs": 3, "height": 1}')
    assert request.width == 512 and request.num_outputs == 3
    assert parse_request(b'{"width": 512, "width": null}').width is None


@pytest.mark.parametrize(
    "text",
    [
        "0A99668B-45BD-4F7E-AA9C-F9AAA41EF13B",
        "{0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b}",
        "x0a99668b-45bd-4f7e-aa9c-f9aaa41ef13bx",  # google/uuid never checks the braces
        "urn:uuid:0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b",
        "0a99668b45bd4f7eaa9cf9aaa41ef13b",
    ],
)
def test_uuid_forms_google_uuid_accepts(text: str) -> None:
    assert parse_go_uuid(text) == UUID(FLUX)


def test_defaults_are_applied_and_steps_become_the_model_default() -> None:
    result = plan(b"{}", seed=77)
    assert result.model_id == UUID(FLUX)
    assert result.scheduler_id == UUID(K_EULER)
    assert (result.width, result.height) == (1024, 1024)
    assert result.num_outputs == 2 and result.cost == 2
    assert result.guidance_scale == 7.0
    assert result.requested_inference_steps == 30
    assert result.inference_steps == 4  # FLUX.1's default, whatever was asked
    assert result.seed == 77
    assert result.prompt_strength is None and result.init_image_url == ""


def test_seed_zero_is_kept_and_a_negative_seed_is_replaced() -> None:
    assert plan(b'{"seed": 0}', seed=5).seed == 0
    assert plan(b'{"seed": -1}', seed=5).seed == 5
    assert plan(b'{"seed": 9007199254740993}').seed == 9007199254740993


def test_guidance_scale_is_a_float32() -> None:
    assert plan(b'{"guidance_scale": 7.1}').guidance_scale == pytest.approx(7.1, abs=1e-6)
    assert plan(b'{"guidance_scale": 7.1}').guidance_scale != 7.1  # float32, not float64
    assert plan(b'{"guidance_scale": 0.99999999}').guidance_scale == 1.0  # rounds to 1 in float32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"height": 1537}', "Height is too large, max is: 1536"),
        (b'{"height": 255}', "Height is too small, min is: 256"),
        (b'{"width": 1537, "height": 512}', "Width is too large, max is: 1536"),
        (b'{"width": 100, "height": 512}', "Width is too small, min is: 256"),
        (b'{"guidance_scale": 0.5}', "Guidance scale is too small, min is: 1.000000"),
        (b'{"guidance_scale": 30.5}', "Guidance scale is too large, max is: 30.000000"),
        (b'{"inference_steps": 9}', "Inference steps is too small, min is: 10"),
        (
            b'{"width": 1024, "height": 1024, "inference_steps": 31}',
            "Pick fewer inference steps or smaller dimensions: 1024 - 1024 - 31",
        ),
        (
            b'{"width": 1536, "height": 1536}',
            "Pick fewer inference steps or smaller dimensions: 1536 - 1536 - 30",
        ),
        (b'{"num_outputs": 5}', "Number of outputs can't be more than 4"),
        (b'{"model_id": "' + KANDINSKY_21.encode() + b'"}', "invalid_model_id"),
        (
            b'{"model_id": "00000000-0000-0000-0000-000000000001", "width": 512, "height": 512}',
            "invalid_model_id",
        ),
        (b'{"init_image_url": "ftp://example.com/a.png"}', "invalid_init_image_url"),
        (b'{"mask_image_url": "file:///etc/passwd"}', "invalid_mask_image_url"),
    ],
)
def test_validation_messages(body: bytes, message: str) -> None:
    assert error_of(body) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"height": 2000, "width": 2000}', "Height is too large, max is: 1536"),
        (b'{"width": 2000, "guidance_scale": 0}', "Width is too large, max is: 1536"),
        (
            b'{"guidance_scale": 40, "inference_steps": 1}',
            "Guidance scale is too large, max is: 30.000000",
        ),
        (b'{"inference_steps": 5, "num_outputs": 9}', "Inference steps is too small, min is: 10"),
        (
            b'{"inference_steps": 40, "num_outputs": 9}',
            "Pick fewer inference steps or smaller dimensions: 1024 - 1024 - 40",
        ),
        (
            b'{"num_outputs": 9, "model_id": "' + KANDINSKY_21.encode() + b'"}',
            "Number of outputs can't be more than 4",
        ),
        (
            b'{"model_id": "' + KANDINSKY_21.encode() + b'", "init_image_url": "bad"}',
            "invalid_model_id",
        ),
        (b'{"init_image_url": "bad", "mask_image_url": "bad"}', "invalid_init_image_url"),
    ],
)
def test_the_first_failing_check_in_server_order_wins(body: bytes, message: str) -> None:
    assert error_of(body) == message


def test_pixel_steps_check_is_exact_at_the_limit() -> None:
    assert plan(b'{"width": 1024, "height": 1024, "inference_steps": 30}').width == 1024
    assert plan(b'{"width": 1536, "height": 1536, "inference_steps": 13}').width == 1536


def test_pixel_steps_product_overflowing_int32_passes() -> None:
    # 1024 * 1024 * 2048 = 2**31 wraps to -2**31 in int32, below the limit.
    result = plan(b'{"width": 1024, "height": 1024, "inference_steps": 2048}')
    assert result.requested_inference_steps == 2048
    assert result.inference_steps == 4
    assert "1024 - 1024 - 2047" in error_of(
        b'{"width": 1024, "height": 1024, "inference_steps": 2047}'
    )


def test_negative_num_outputs_becomes_two_and_zero_passes_validation() -> None:
    assert plan(b'{"num_outputs": -3}').num_outputs == 2
    assert plan(b'{"num_outputs": 0}').cost == 0


def test_incompatible_scheduler_is_silently_replaced_by_the_models_default() -> None:
    body = b'{"model_id": "%s", "scheduler_id": "%s"}' % (KANDINSKY_22.encode(), K_EULER.encode())
    assert plan(body).scheduler_id == UUID(DDPM)
    unknown = b'{"scheduler_id": "11111111-1111-1111-1111-111111111111"}'
    assert plan(unknown).scheduler_id == UUID(K_EULER)
    compatible = b'{"scheduler_id": "%s"}' % K_EULER_ANCESTRAL.encode()
    assert plan(compatible).scheduler_id == UUID(K_EULER_ANCESTRAL)


def test_unknown_model_without_a_size_panics_like_the_server() -> None:
    with pytest.raises(ServerPanic):
        plan(b'{"model_id": "00000000-0000-0000-0000-000000000001", "width": 512}')
    with pytest.raises(ServerPanic):  # even before size validation
        plan(b'{"model_id": "00000000-0000-0000-0000-000000000001", "height": 99999}')


def test_prompt_strength_defaults_with_an_init_image_and_is_clamped() -> None:
    url = b'"init_image_url": "https://example.com/a.png"'
    assert plan(b"{" + url + b"}").prompt_strength == 0.5
    assert plan(b"{" + url + b', "prompt_strength": 1.5}').prompt_strength == 1.0
    assert plan(b"{" + url + b', "prompt_strength": -0.25}').prompt_strength == 0.0
    assert plan(b'{"prompt_strength": 0.25}').prompt_strength == 0.25
    assert plan(b'{"init_image_url": "s3://key"}').init_image_url == "s3://key"


@pytest.mark.parametrize(
    ("raw", "formatted"),
    [
        ("  a   cat\n\nin\tspace  ", "a cat in space"),
        ("a\u00a0b\u3000c\r\nd\x0be", "a b c d e"),
        ("a\x1cb", "a\x1cb"),  # not a space for Go, unlike Python's str.split
        ("", ""),
    ],
)
def test_format_prompt_collapses_whitespace(raw: str, formatted: str) -> None:
    assert format_prompt(raw) == formatted


def test_format_prompt_cuts_long_prompts_to_500_bytes() -> None:
    assert format_prompt("x" * 600) == "x" * 500
    assert format_prompt("é" * 500) == "é" * 500  # 1000 bytes but only 500 runes: kept
    cut = format_prompt("a" + "é" * 500)  # 501 runes: first 500 bytes, splitting a character
    assert cut == "a" + "é" * 249 + "\ufffd"


def test_image_url_checks() -> None:
    owner = "f" * 64 + "/"
    assert validation.image_url_error("https://example.com/a.png", owner, mask=False) is None
    assert validation.image_url_error("", owner, mask=False) is None
    assert validation.image_url_error("s3://someone/x.png", owner, mask=False) == (
        401,
        "init_image_not_owned",
    )
    assert validation.image_url_error(f"s3://{owner}x.png", owner, mask=False) == (
        400,
        "init_image_not_found",
    )
    assert validation.image_url_error(f"s3://{owner}x.png", owner, mask=True) == (
        400,
        "mask_image_not_found",
    )
    # Not a valid http(s) URL for Go's parser: handled as an s3 key, so not the caller's.
    assert validation.image_url_error("http://[::1/x.png", owner, mask=False) == (
        401,
        "init_image_not_owned",
    )
    assert validation.is_valid_http_url("http://[::1]:8000/x.png")
    assert not validation.is_valid_http_url("https://")
