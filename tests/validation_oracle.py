"""An oracle of the documented request constraints (docs/upstream-api.md#validation, the
.proto's rules), independent of the gateway's validator: hypothesis strategies that draw a
value for every request field and know, from how each value was drawn, whether it breaks a
rule. The property tests judge the gateway against it, in process
(tests/gateway/test_validation_property.py) and end to end through a real gateway
(tests/faults/test_validation_end_to_end.py).

It is written from the documentation, not from the validator: it knows the limits as
numbers. A gateway judged by it must be configured with `max_prompt_chars=MAX_PROMPT_CHARS`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.contract_samples import REQUEST_FIELDS

MAX_PROMPT_CHARS = 200  # small, so that drawing past it is cheap
# Go's unicode.IsSpace, which the upstream's strings.Fields splits on.
GO_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True)
class Drawn:
    """A request and the oracle's verdict: the fields that break a documented rule."""

    fields: dict[str, Any]
    broken: frozenset[str]


def f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


FINE_TEXT = st.text(min_size=1, max_size=40).filter(lambda t: any(c not in GO_SPACES for c in t))


def prompts(name: str) -> st.SearchStrategy[tuple[str, bool]]:
    """(text, broken?) for a prompt field: blank only matters for `prompt`."""
    blank = st.text(alphabet=GO_SPACES, max_size=5).map(lambda t: (t, name == "prompt"))
    too_long = st.just("x" * (MAX_PROMPT_CHARS + 1)).map(lambda t: (t, True))
    return st.one_of(blank, FINE_TEXT.map(lambda t: (t, False)), too_long)


def in_range(low: int, high: int, *, multiple: int = 1) -> st.SearchStrategy[tuple[int, bool]]:
    def judged(v: int) -> tuple[int, bool]:
        return v, not (low <= v <= high and v % multiple == 0)

    return st.integers(-(2**31), 2**31 - 1).map(judged) | st.integers(low - 16, high + 16).map(
        judged
    )


def floats_in(low: float, high: float) -> st.SearchStrategy[tuple[float, bool]]:
    return st.floats(width=32, allow_nan=True, allow_infinity=True).map(
        lambda v: (v, not (math.isfinite(v) and low <= f32(v) <= high))
    ) | st.floats(low - 1, high + 1, width=32).map(lambda v: (v, not (low <= f32(v) <= high)))


def within(low: int, high: int, *, multiple: int = 1) -> st.SearchStrategy[tuple[int, bool]]:
    """Values a documented range allows (for drawing requests that pass)."""
    return st.integers(-(-low // multiple), high // multiple).map(lambda v: (v * multiple, False))


def floats_within(low: float, high: float) -> st.SearchStrategy[tuple[float, bool]]:
    return st.floats(low, high, width=32).map(lambda v: (v, False))


GOOD_UUIDS = st.one_of(
    st.uuids().map(lambda u: (str(u), False)),
    st.uuids().map(lambda u: (str(u).upper(), False)),
)
# A fixed undashed hex (not uuid4(): the same examples every run).
UUIDS = GOOD_UUIDS | st.sampled_from(
    ["flux", "6fb13b76-9900-4fa4-abf8", "6fb13b7699004fa4abf88f843e034a7f", ""]
).map(lambda t: (t, True))
GOOD_URLS = st.sampled_from(
    ["https://example.com/a.png", "http://example.com/b", "s3://bucket/key.png"]
).map(lambda t: (t, False))
URLS = GOOD_URLS | st.sampled_from(
    ["ftp://example.com/a.png", "example.com/a.png", "https://", "not a url", "s3:///x"]
).map(lambda t: (t, True))
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
# Values each rule allows, so that a request passes more often than one in forty: drawn by
# `requests(mostly_valid=True)` for four fields in five.
VALID_FIELD_STRATEGIES: dict[str, st.SearchStrategy[tuple[Any, bool]]] = {
    "prompt": FINE_TEXT.map(lambda t: (t, False)),
    "negative_prompt": FINE_TEXT.map(lambda t: (t, False)),
    "model_id": GOOD_UUIDS,
    "scheduler_id": GOOD_UUIDS,
    "width": within(256, 1024, multiple=8),
    "height": within(256, 1024, multiple=8),
    "num_outputs": within(1, 4),
    "inference_steps": within(10, 50),
    "guidance_scale": floats_within(1.0, 20.0),
    "prompt_strength": floats_within(0.0, 1.0),
    "seed": FIELD_STRATEGIES["seed"],
    "init_image_url": GOOD_URLS,
}


@st.composite
def requests(draw: st.DrawFn, *, mostly_valid: bool = False) -> Drawn:
    """A request and the oracle's verdict on it."""
    fields: dict[str, Any] = {}
    broken: set[str] = set()
    for field in REQUEST_FIELDS:
        # prompt is always present (proto3 without presence); the others may be unset.
        if field.name != "prompt" and not draw(st.booleans()):
            continue
        valid = mostly_valid and draw(st.integers(0, 4)) > 0
        strategy = (VALID_FIELD_STRATEGIES if valid else FIELD_STRATEGIES)[field.name]
        value, bad = draw(strategy)
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
