"""ListModels and GetCredits: the free reads a keyless caller needs from Stablecog.

Registered on GenerationService next to CreateGeneration (gateway.servicer) and run by
the call runner like it, so each call gets the same metrics, access log and error
details. Nothing here spends credits.
"""

from __future__ import annotations

import grpc

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.auth import KeyResolver
from gateway.balance import Balance
from gateway.call import Call, CallReport
from gateway.call_runner import Answer, CallRunner
from gateway.catalog import READ_SECONDS, ModelCatalog
from gateway.catalog_translate import credits_from_json
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.events import NULL_TELEMETRY, BalanceObserved, Telemetry
from gateway.servicer import SERVICE_NAME
from gateway.upstream import StablecogClient
from gateway.upstream_defaults import CREDITS_ENDPOINT, CREDITS_PATH


class CatalogServicer:
    """Serves ListModels and GetCredits (registered through `rpc_handler`)."""

    def __init__(
        self,
        *,
        runner: CallRunner,
        catalog: ModelCatalog,
        client: StablecogClient,
        keys: KeyResolver,
        telemetry: Telemetry = NULL_TELEMETRY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._runner = runner
        self._catalog = catalog
        self._client = client
        self._keys = keys
        self._telemetry = telemetry
        self._clock = clock

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """The methods, each run by the call runner from the request's bytes."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ListModels": self._runner.unary(
                    SERVICE_NAME,
                    "ListModels",
                    generation_pb2.ListModelsRequest,
                    generation_pb2.ListModelsResponse,
                    self._list_models,
                ),
                "GetCredits": self._runner.unary(
                    SERVICE_NAME,
                    "GetCredits",
                    generation_pb2.GetCreditsRequest,
                    generation_pb2.GetCreditsResponse,
                    self._get_credits,
                ),
            },
        )

    async def _list_models(
        self, request: generation_pb2.ListModelsRequest, call: Call, report: CallReport
    ) -> Answer:
        catalog = await self._catalog.get(call.budget.seconds)
        return Answer(catalog, trailers=(("x-catalog", "stale" if catalog.stale else "fresh"),))

    async def _get_credits(
        self, request: generation_pb2.GetCreditsRequest, call: Call, report: CallReport
    ) -> Answer:
        key = self._keys.resolve(call.metadata)
        report.account = key.fingerprint
        started_at = self._clock.wall()
        body = await self._client.read(
            CREDITS_PATH, CREDITS_ENDPOINT, min(call.budget.seconds, READ_SECONDS), key
        )
        response = credits_from_json(body)
        report.remaining_credits = response.total_remaining_credits
        self._telemetry.emit(
            BalanceObserved(
                key.fingerprint, Balance(response.total_remaining_credits, observed_at=started_at)
            )
        )
        return Answer(response)
