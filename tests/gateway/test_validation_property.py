"""Property: over every request field, the gateway's verdict agrees with an independent
oracle of the documented constraints (docs/upstream-api.md#validation, the .proto's
rules), and any bytes at all are either refused as undecodable or judged like that.

The oracle is written from the documentation, not from the validator: it knows the
limits as numbers and decides each drawn value from how it was drawn.
"""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.call_runner import CallRunner
from gateway.errors import InvalidRequest
from gateway.events import NULL_TELEMETRY
from gateway.validation import RequestValidator
from tests.contract_samples import REQUEST_FIELDS

MAX_PROMPT_CHARS = 200  # small, so that drawing past it is cheap
# Go's unicode.IsSpace, which the upstream's strings.Fields splits on.
GO_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
VALIDATOR = RequestValidator(max_prompt_chars=MAX_PROMPT_CHARS)


@dataclass(frozen=True)
class Drawn:
    """A request and the oracle's verdict: the fields that break a documented rule."""

    fields: dict[str, Any]
    broken: frozenset[str]


def f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def prompts(name: str) -> st.SearchStrategy[tuple[str, bool]]:
    """(text, broken?) for a prompt field: blank only matters for `prompt`."""
    blank = st.text(alphabet=GO_SPACES, max_size=5).map(lambda t: (t, name == "prompt"))
    fine = st.text(min_size=1, max_size=40).filter(lambda t: any(c not in GO_SPACES for c in t))
    too_long = st.just("x" * (MAX_PROMPT_CHARS + 1)).map(lambda t: (t, True))
    return st.one_of(blank, fine.map(lambda t: (t, False)), too_long)


def in_range(low: int, high: int, *, multiple: int = 1) -> st.SearchStrategy[tuple[int, bool]]:
    return st.integers(-(2**31), 2**31 - 1).map(
        lambda v: (v, not (low <= v <= high and v % multiple == 0))
    ) | st.integers(low - 16, high + 16).map(
        lambda v: (v, not (low <= v <= high and v % multiple == 0))
    )


def floats_in(low: float, high: float) -> st.SearchStrategy[tuple[float, bool]]:
    return st.floats(width=32, allow_nan=True, allow_infinity=True).map(
        lambda v: (v, not (math.isfinite(v) and low <= f32(v) <= high))
    ) | st.floats(low - 1, high + 1, width=32).map(lambda v: (v, not (low <= f32(v) <= high)))


UUIDS = st.one_of(
    st.uuids().map(lambda u: (str(u), False)),
    st.uuids().map(lambda u: (str(u).upper(), False)),
    st.sampled_from(["flux", "6fb13b76-9900-4fa4-abf8", uuid.uuid4().hex, ""]).map(
        lambda t: (t, True)
    ),
)
URLS = st.one_of(
    st.sampled_from(
        ["https://example.com/a.png", "http://example.com/b", "s3://bucket/key.png"]
    ).map(lambda t: (t, False)),
    st.sampled_from(
        ["ftp://example.com/a.png", "example.com/a.png", "https://", "not a url", "s3:///x"]
    ).map(lambda t: (t, True)),
)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[tuple[Any, bool]]] = {
    "prompt": prompts("prompt"),
    "negative_prompt": prompts("negative_prompt"),
    "model_id": UUIDS,
    "scheduler_id": UUIDS,
    "width": in_range(256, 1024, multiple=8),
    "height": in_range(256, 1024, multiple=8),
    "num_outputs": in_range(1, 4),
    "inference_steps": in_range(10, 50),
    "guidance_scale": floats_in(1.0, 20.0),
    "prompt_strength": floats_in(0.0, 1.0),
    "seed": st.integers(-(2**63), 2**63 - 1).map(lambda v: (v, False)),
    "init_image_url": URLS,
}


def test_the_oracle_covers_every_field_of_the_contract() -> None:
    assert set(FIELD_STRATEGIES) == {f.name for f in REQUEST_FIELDS}


@st.composite
def requests(draw: st.DrawFn) -> Drawn:
    fields: dict[str, Any] = {}
    broken: set[str] = set()
    for field in REQUEST_FIELDS:
        # prompt is always present (proto3 without presence); the others may be unset.
        if field.name != "prompt" and not draw(st.booleans()):
            continue
        value, bad = draw(FIELD_STRATEGIES[field.name])
        fields[field.name] = value
        if bad:
            broken.add(field.name)
    fields.setdefault("prompt", "")
    if not any(c not in GO_SPACES for c in fields["prompt"]):
        broken.add("prompt")  # also when it was left empty
    width, height = fields.get("width"), fields.get("height")
    if width is not None and height is not None:
        steps = fields.get("inference_steps", 30)
        if width * height * steps > 1024 * 1024 * 30:
            broken.add("inference_steps")  # the pixel-steps rule names steps
    return Drawn(fields, frozenset(broken))


@settings(max_examples=400, deadline=None)
@given(requests())
def test_the_verdict_agrees_with_the_oracle(drawn: Drawn) -> None:
    request = generation_pb2.GenerationRequest(**drawn.fields)
    found = {v.field for v in VALIDATOR.violations(request)}
    assert found == drawn.broken, drawn.fields


@settings(max_examples=400, deadline=None)
@given(requests())
def test_the_verdict_survives_the_wire(drawn: Drawn) -> None:
    """What a caller's stub sends is judged exactly like the message it built."""
    wire = generation_pb2.GenerationRequest(**drawn.fields).SerializeToString()
    runner = CallRunner(telemetry=NULL_TELEMETRY, caller_label=str, upstream_timeout=600)
    decoded = runner._decoded(wire, generation_pb2.GenerationRequest.FromString)
    assert {v.field for v in VALIDATOR.violations(decoded)} == drawn.broken


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_refused_or_judged_never_a_crash(raw: bytes) -> None:
    runner = CallRunner(telemetry=NULL_TELEMETRY, caller_label=str, upstream_timeout=600)
    try:
        decoded = runner._decoded(raw, generation_pb2.GenerationRequest.FromString)
    except InvalidRequest as refused:
        reason = refused.reason
    else:
        reason = None
        VALIDATOR.violations(decoded)  # judged, whatever it holds
    assert reason in (None, "UNDECODABLE_REQUEST")


def test_huge_sizes_are_judged_not_an_evaluation_error() -> None:
    """Found by the property test: width * height * steps overflowed CEL's int64, so the
    rule raised instead of judging (the caller got GATEWAY_INTERNAL_ERROR)."""
    request = generation_pb2.GenerationRequest(
        prompt="p", width=9065, height=25490188, inference_steps=39916172
    )
    found = {v.field for v in VALIDATOR.violations(request)}
    assert found == {"width", "height", "inference_steps"}
