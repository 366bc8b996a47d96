"""Property, end to end: through a real gateway on loopback against the emulator, the gRPC
verdict on hypothesis-drawn requests agrees with the oracle of the documented constraints
(tests/validation_oracle.py), and no request the oracle calls invalid reaches the upstream
(the emulator's request records). Requests go as messages through the stub and as raw wire
bytes (fields in any order, overridden earlier values, unknown fields, or any bytes at all)
through a raw-bytes unary call.

Hypothesis runs many examples on one gateway and one emulator (function-scoped fixtures,
on purpose): each example counts the emulator's requests before and after its own call.
Derandomized, without an example database, so CI draws the same examples every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import Seams
from gateway.errors import GATEWAY_DOMAIN
from gateway.servicer import SERVICE_NAME
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.contract_samples import REQUEST_FIELDS
from tests.fixtures import CatalogDown, upstream_calls
from tests.status import rich_error
from tests.validation_oracle import FIELD_STRATEGIES, MAX_PROMPT_CHARS, Drawn, requests

METHOD = f"/{SERVICE_NAME}/CreateGeneration"
# The gateway's own refusals of a request as such (before anything is sent).
REFUSALS = ("INVALID_REQUEST", "UNDECODABLE_REQUEST")
EXAMPLES = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Field numbers the contract does not use: unknown fields, which a decoder keeps and ignores.
UNKNOWN_NUMBERS = st.integers(1000, 536_870_911)
_KNOWN_NUMBERS = {f.number for f in generation_pb2.GenerationRequest.DESCRIPTOR.fields}

Send = Callable[[bytes], Any]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def unknown_field(number: int, payload: int | bytes) -> bytes:
    assert number not in _KNOWN_NUMBERS
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_bytes(name: str, value: object) -> bytes:
    """The wire encoding of one field set to `value` (empty for proto3's implicit zero)."""
    return generation_pb2.GenerationRequest(**{name: value}).SerializeToString()


@st.composite
def wire_requests(draw: st.DrawFn) -> tuple[bytes, Drawn]:
    """Bytes that decode to the drawn request, however a hand-made encoder may lay them
    out: fields in any order, earlier values of a field that the last one overrides,
    unknown fields anywhere."""
    drawn = draw(requests(mostly_valid=True))
    parts = draw(st.permutations([field_bytes(n, v) for n, v in drawn.fields.items()]))
    encoded = [n for n, v in drawn.fields.items() if field_bytes(n, v)]  # can be overridden
    overridden = draw(st.lists(st.sampled_from(encoded), max_size=3)) if encoded else []
    decoys = [field_bytes(name, draw(FIELD_STRATEGIES[name])[0]) for name in overridden]
    unknown = draw(
        st.lists(
            st.builds(
                unknown_field,
                UNKNOWN_NUMBERS.filter(lambda n: n not in _KNOWN_NUMBERS),
                st.integers(0, 2**64 - 1) | st.binary(max_size=8),
            ),
            max_size=3,
        )
    )
    body = decoys + parts
    for extra in unknown:
        body.insert(draw(st.integers(0, len(body))), extra)
    return b"".join(body), drawn


# A valid prompt before random bytes: what follows sometimes decodes into a request to judge.
PROMPTED = field_bytes("prompt", "a lighthouse at dawn")


@pytest.fixture
async def send(make_gateway: GatewayFactory, emulator: Emulator) -> Any:
    """A raw-bytes unary call to a gateway judging prompts by the oracle's limit; the cache
    is off, so every accepted request reaches the emulator. The model catalog is
    unreachable, so the gateway judges by the documented constraints alone, as the oracle
    does (the catalog's own checks: tests/gateway/test_catalog_validation.py)."""
    emulator.add_account(ACCOUNT_KEY, 10**9)
    app = await make_gateway(
        Seams(upstream_transport=CatalogDown()), max_prompt_chars=MAX_PROMPT_CHARS, cache="off"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        yield channel.unary_unary(
            METHOD,
            request_serializer=None,
            response_deserializer=generation_pb2.GenerationResponse.FromString,
        )


async def verdict(send: Send, emulator: Emulator, wire: bytes) -> tuple[set[str] | None, int]:
    """(the fields the gateway refused the request for, or None if it did not refuse it;
    how many requests reached the emulator for it)."""
    before = upstream_calls(emulator)
    refused: set[str] | None = None
    try:
        await send(wire, timeout=30)
    except grpc.aio.AioRpcError as failure:
        # Anything else is an answer to what the upstream did with an accepted request
        # (its own validation; for an unknown model without a size, a dropped connection).
        error = rich_error(failure)
        assert error.info is not None, error.message
        if (
            error.code is grpc.StatusCode.INVALID_ARGUMENT
            and error.info.domain == GATEWAY_DOMAIN
            and error.info.reason in REFUSALS
        ):
            refused = {field for field, _ in error.violations}
    return refused, upstream_calls(emulator) - before


def assert_agrees(drawn: Drawn, refused: set[str] | None, reached: int) -> None:
    event("refused" if drawn.broken else "sent upstream")  # --hypothesis-show-statistics
    if drawn.broken:
        assert refused == drawn.broken, drawn.fields
        assert reached == 0, f"an invalid request reached the upstream: {drawn.fields}"
    else:
        assert refused is None, (refused, drawn.fields)
        assert reached == 1, drawn.fields


@EXAMPLES
@given(drawn=requests(mostly_valid=True))
async def test_the_gateway_agrees_with_the_oracle_end_to_end(
    send: Send, emulator: Emulator, drawn: Drawn
) -> None:
    wire = generation_pb2.GenerationRequest(**drawn.fields).SerializeToString()
    assert_agrees(drawn, *await verdict(send, emulator, wire))


@EXAMPLES
@given(case=wire_requests())
async def test_hand_made_wire_bytes_are_judged_as_what_they_decode_to(
    send: Send, emulator: Emulator, case: tuple[bytes, Drawn]
) -> None:
    wire, drawn = case
    assert_agrees(drawn, *await verdict(send, emulator, wire))


@EXAMPLES
@given(wire=st.binary(max_size=120) | st.binary(max_size=60).map(PROMPTED.__add__))
async def test_any_bytes_reach_the_upstream_only_when_accepted(
    send: Send, emulator: Emulator, wire: bytes
) -> None:
    refused, reached = await verdict(send, emulator, wire)
    event("refused" if refused is not None else "sent upstream")
    assert reached == (0 if refused is not None else 1)


def test_the_wire_builder_covers_every_field() -> None:
    """Every field of the contract can be laid out by hand (the oracle draws them all)."""
    assert {f.name for f in REQUEST_FIELDS} == set(FIELD_STRATEGIES)
    decoded = generation_pb2.GenerationRequest.FromString(
        unknown_field(4242, 7) + field_bytes("width", 512) + unknown_field(4243, b"xy")
    )
    assert [(f.name, v) for f, v in decoded.ListFields()] == [("width", 512)]
    overridden = field_bytes("width", 8) + field_bytes("width", 512)
    assert generation_pb2.GenerationRequest.FromString(overridden).width == 512
