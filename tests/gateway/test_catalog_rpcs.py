"""ListModels and GetCredits against the emulator over real gRPC, and the catalog cache's
TTL and stale-on-failure rule with a fake upstream and a FakeClock."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from emulator import catalog as emulator_catalog
from emulator.server import Emulator
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.account import account_fingerprint
from gateway.app import GatewayApp
from gateway.catalog import RETRY_AFTER_FAILURE_SECONDS, ModelCatalog
from gateway.errors import UpstreamReadFailed
from gateway.upstream import StablecogClient
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS, FakeClock
from tests.services import refusing_port


async def test_list_models_serves_the_upstream_catalog(
    gateway: GatewayApp, stub: generation_pb2_grpc.GenerationServiceStub
) -> None:
    response = await stub.ListModels(generation_pb2.ListModelsRequest())
    active = emulator_catalog.active_models()
    assert [m.id for m in response.models] == [str(m.id) for m in active]
    flux = response.models[0]
    assert (flux.name, flux.is_default, flux.default_width, flux.default_height) == (
        "FLUX.1",
        True,
        1024,
        1024,
    )
    assert [s.name for s in flux.schedulers] == [
        emulator_catalog.get_scheduler(s).name for s in active[0].scheduler_ids
    ]
    assert response.defaults.model_id == str(emulator_catalog.DEFAULT_MODEL_ID)
    assert response.defaults.num_outputs == 2
    assert not response.stale
    assert response.fetched_at.seconds > 0
    handled = gateway.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "stablecog.v1.GenerationService",
            "grpc_method": "ListModels",
            "grpc_code": "OK",
        },
    )
    assert handled == 1


async def test_list_models_fetches_once_per_ttl(
    emulator: Emulator, stub: generation_pb2_grpc.GenerationServiceStub
) -> None:
    for _ in range(3):
        await stub.ListModels(generation_pb2.ListModelsRequest())
    paths = [r.path for r in emulator.requests if "generation/" in r.path]
    assert paths.count("/v1/image/generation/models") == 1
    assert paths.count("/v1/image/generation/defaults") == 1


async def test_get_credits_reports_the_balance_and_feeds_the_gauge(
    gateway: GatewayApp, stub: generation_pb2_grpc.GenerationServiceStub
) -> None:
    response = await stub.GetCredits(generation_pb2.GetCreditsRequest())
    assert response.total_remaining_credits == INITIAL_CREDITS
    assert len(response.credits) == 1
    assert response.credits[0].remaining_amount == INITIAL_CREDITS
    assert response.credits[0].expires_at.ToDatetime().year == 2100
    assert response.credits[0].type.amount == INITIAL_CREDITS
    gauge = gateway.registry.get_sample_value(
        "stablecog_credits_remaining", {"account": account_fingerprint(ACCOUNT_KEY)}
    )
    assert gauge == INITIAL_CREDITS


async def test_get_credits_with_a_rejected_caller_key(make_gateway, emulator: Emulator) -> None:
    gateway = await make_gateway(api_key=None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        bad_key = "sc-" + "1" * 64
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCredits(
                generation_pb2.GetCreditsRequest(),
                metadata=[("authorization", f"Bearer {bad_key}")],
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert bad_key not in (caught.value.details() or "")


def _upstream(answers: list[int]) -> tuple[StablecogClient, list[str]]:
    """A client whose upstream answers the catalog routes with the given statuses in turn."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = answers[min(len(seen) - 1, len(answers) - 1)]
        if status != 200:
            return httpx.Response(status, json={"error": "An unknown error has occured"})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"models": [{"id": "m1", "name": "M"}]})
        return httpx.Response(200, json={"model_id": "m1", "width": 512, "height": 512})

    client = StablecogClient("http://upstream.invalid", transport=httpx.MockTransport(handle))
    return client, seen


async def test_a_failed_refresh_serves_the_last_good_catalog() -> None:
    clock = FakeClock()
    client, seen = _upstream([200, 200, 500, 500, 200, 200])
    catalog = ModelCatalog(client, ttl=60.0, clock=clock)
    first = await catalog.get()
    assert (first.models[0].id, first.stale) == ("m1", False)
    clock.advance(61.0)
    stale = await catalog.get()
    assert (stale.models[0].id, stale.stale) == ("m1", True)
    asked = len(seen)
    assert (await catalog.get()).stale  # within the pause: not asked again
    assert len(seen) == asked
    clock.advance(RETRY_AFTER_FAILURE_SECONDS)
    assert not (await catalog.get()).stale
    await client.aclose()


async def test_no_catalog_yet_and_the_upstream_fails() -> None:
    client, _ = _upstream([503])
    with pytest.raises(UpstreamReadFailed):
        await ModelCatalog(client, clock=FakeClock()).get()
    await client.aclose()


async def test_a_failed_read_is_unavailable_with_its_reason(make_gateway) -> None:
    with refusing_port() as port:
        gateway = await make_gateway(upstream_url=f"http://127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetCredits(generation_pb2.GetCreditsRequest())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(caught.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert info.reason == "UPSTREAM_READ_FAILED"
