"""Property: over every request field, the gateway's verdict agrees with an independent
oracle of the documented constraints (tests/validation_oracle.py), and any bytes at all are
either refused as undecodable or judged like that.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.call_runner import CallRunner
from gateway.errors import InvalidRequest
from gateway.events import NULL_TELEMETRY
from gateway.validation import RequestValidator
from tests.contract_samples import REQUEST_FIELDS
from tests.validation_oracle import FIELD_STRATEGIES, MAX_PROMPT_CHARS, Drawn, requests

VALIDATOR = RequestValidator(max_prompt_chars=MAX_PROMPT_CHARS)


def test_the_oracle_covers_every_field_of_the_contract() -> None:
    assert set(FIELD_STRATEGIES) == {f.name for f in REQUEST_FIELDS}


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
