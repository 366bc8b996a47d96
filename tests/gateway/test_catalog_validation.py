"""Catalog-aware validation over real gRPC against the emulator: unknown and inactive
models, default-size pixel-steps and incompatible schedulers refused before any spend; and,
while the catalog cannot be fetched, generations still served, the skip counted, the
outage logged once, the upstream's own answers passed on."""

from __future__ import annotations

import logging

import grpc
import pytest

from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2
from gateway.app import GatewayApp, Seams
from gateway.cache_key import CatalogDefaults, cache_key
from gateway.catalog import RETRY_AFTER_FAILURE_SECONDS
from gateway.validation import RequestValidator, catalog_violations
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, FakeClock, GatewayFactory
from tests.fixtures import CatalogDown, Stub, eventually, request, upstream_calls
from tests.status import rich_error

UNKNOWN_MODEL = "00000000-0000-4000-8000-000000000000"
KANDINSKY_21 = "22b0857d-7edc-4d00-9cd9-45aa509db093"  # inactive
WAIFU = "f7f3d973-ac6f-4a7a-9db8-e89e4fba03a9"  # 512 x 512 by default
FLUX = "0a99668b-45bd-4f7e-aa9c-f9aaa41ef13b"  # the default model, 1024 x 1024
DDPM = "cc1b8dbf-0aec-4e52-8110-8082506fb7ba"  # Kandinsky only
K_EULER = "6fb13b76-9900-4fa4-abf8-8f843e034a7f"


async def refused(stub: Stub, **fields: object) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateGeneration(request(**fields))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.info is not None and error.info.reason == "INVALID_REQUEST"
    return [field for field, _ in error.violations]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_id": UNKNOWN_MODEL}, "model_id"),  # upstream: a dropped connection
        ({"model_id": KANDINSKY_21, "width": 512, "height": 512}, "model_id"),
        ({"inference_steps": 50}, "inference_steps"),  # 1024 x 1024 x 50 by default
        ({"model_id": FLUX, "height": 1024, "inference_steps": 40}, "inference_steps"),
        ({"scheduler_id": DDPM}, "scheduler_id"),  # upstream: silently replaced
    ],
    ids=["unknown-model", "inactive-model", "default-size", "default-width", "scheduler"],
)
async def test_the_catalog_refuses_before_any_spend(
    stub: Stub, emulator: Emulator, fields: dict[str, object], field: str
) -> None:
    assert await refused(stub, **fields) == [field]
    assert upstream_calls(emulator) == 0
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS


async def test_what_the_catalog_allows_reaches_the_upstream(
    stub: Stub, emulator: Emulator, gateway: GatewayApp
) -> None:
    # 512 x 512 x 50 with Waifu's default size; a scheduler FLUX.1 accepts.
    await stub.CreateGeneration(request(model_id=WAIFU, inference_steps=50, num_outputs=1))
    await stub.CreateGeneration(request(scheduler_id=K_EULER.upper(), num_outputs=1))
    assert upstream_calls(emulator) == 2
    skipped = gateway.registry.get_sample_value("stablecog_catalog_checks_skipped_total")
    assert skipped == 0


def test_an_incompatible_scheduler_names_the_compatible_ones() -> None:
    catalog = generation_pb2.ListModelsResponse()
    model = catalog.models.add(id=FLUX, name="FLUX.1", is_default=True)
    model.schedulers.add(id=K_EULER, name="K_EULER")
    (violation,) = catalog_violations(request(scheduler_id=DDPM), catalog)
    assert violation.field == "scheduler_id"
    assert "FLUX.1" in violation.description and f"K_EULER ({K_EULER})" in violation.description


def test_without_a_catalog_the_checks_are_skipped_and_reported() -> None:
    events: list[object] = []

    class Sink:
        def emit(self, event: object) -> None:
            events.append(event)

    validator = RequestValidator(catalog=lambda: None, telemetry=Sink())
    assert validator.violations(request(model_id=UNKNOWN_MODEL)) == []
    assert [type(e).__name__ for e in events] == ["CatalogChecksSkipped"]
    assert validator.violations(generation_pb2.CreateUpscaleRequest(input=UNKNOWN_MODEL)) == []
    assert len(events) == 1  # only generations use the catalog


async def test_while_the_catalog_is_down_generations_are_served_and_the_skip_counted(
    make_gateway: GatewayFactory, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.catalog")
    network, clock = CatalogDown(), FakeClock()
    gateway = await make_gateway(Seams(upstream_transport=network, clock=clock))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = Stub(channel)
        served = await stub.CreateGeneration(request(num_outputs=1))
        assert len(served.outputs) == 1
        # Without the catalog, the upstream's own answers: a code naming the field...
        with pytest.raises(grpc.aio.AioRpcError) as coded:
            await stub.CreateGeneration(request(model_id=UNKNOWN_MODEL, width=512, height=512))
        assert rich_error(coded.value).info.reason == "INVALID_MODEL_ID"  # type: ignore[union-attr]
        assert [f for f, _ in rich_error(coded.value).violations] == ["model_id"]
        # ... and, as the real server does on a nil model, a dropped connection.
        with pytest.raises(grpc.aio.AioRpcError) as dropped:
            await stub.CreateGeneration(request(model_id=UNKNOWN_MODEL))
        assert rich_error(dropped.value).code is grpc.StatusCode.INTERNAL
        assert rich_error(dropped.value).info.reason == "UPSTREAM_CONNECTION_LOST"  # type: ignore[union-attr]
        tried = network.catalog_requests
        clock.advance(RETRY_AFTER_FAILURE_SECONDS)  # a refresh is due: tried in the background
        await stub.CreateGeneration(request(num_outputs=1))
        await eventually(lambda: network.catalog_requests > tried)
    skipped = gateway.registry.get_sample_value("stablecog_catalog_checks_skipped_total")
    assert skipped == 4
    outage = [r for r in caplog.records if "model catalog" in r.getMessage()]
    assert len(outage) == 1 and "skipped" in outage[0].getMessage()
    await network.aclose()


def test_the_cache_key_fills_in_the_catalogs_defaults() -> None:
    catalog = generation_pb2.ListModelsResponse()
    catalog.models.add(id=FLUX, is_default=True, default_width=1024, default_height=1024)
    catalog.models.add(id=WAIFU, default_width=512, default_height=512)
    defaults = CatalogDefaults.of(catalog)
    omitted = request(seed=1)
    explicit = request(seed=1, model_id=FLUX.upper(), width=1024, height=1024)
    assert cache_key(omitted, "s", defaults) == cache_key(explicit, "s", defaults)
    assert cache_key(omitted, "s") != cache_key(explicit, "s")  # no catalog: kept apart
    waifu = request(seed=1, model_id=WAIFU)
    assert cache_key(waifu, "s", defaults) == cache_key(
        request(seed=1, model_id=WAIFU, width=512, height=512), "s", defaults
    )
    assert cache_key(waifu, "s", defaults) != cache_key(omitted, "s", defaults)


async def test_omitting_the_model_and_naming_the_default_share_a_cache_entry(
    stub: Stub, emulator: Emulator
) -> None:
    first = await stub.CreateGeneration(request(seed=5, num_outputs=1))
    second = await stub.CreateGeneration(
        request(seed=5, num_outputs=1, model_id=FLUX, width=1024, height=1024)
    )
    assert second.cache_result == generation_pb2.CacheResult.CACHE_RESULT_HIT
    assert second.outputs[0].url == first.outputs[0].url
    assert upstream_calls(emulator) == 1
