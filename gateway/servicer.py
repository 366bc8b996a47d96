"""GenerationService: per call, validate -> resolve the key -> generate -> answer.

No HTTP details here. Every failure is a GatewayError, which leaves as a
`google.rpc.Status` with typed details. The servicer also counts calls in flight so
the application can drain them on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_status import rpc_status

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from gateway.auth import KeyResolver
from gateway.errors import GatewayDraining, GatewayError, to_status
from gateway.generation import CacheControl, GenerationCall, Generator
from gateway.upstream import CallBudget
from gateway.validation import RequestValidator

_log = logging.getLogger(__name__)

CACHE_RESULT_NAMES = {
    value: name.removeprefix("CACHE_RESULT_").lower()
    for name, value in generation_pb2.CacheResult.items()
}


class InFlight:
    """Counts calls in flight; `wait_idle` returns when none are left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    """Serves CreateGeneration."""

    def __init__(
        self,
        *,
        validator: RequestValidator,
        keys: KeyResolver,
        generator: Generator,
        upstream_timeout: float,
    ) -> None:
        self._validator = validator
        self._keys = keys
        self._generator = generator
        self._upstream_timeout = upstream_timeout
        self.in_flight = InFlight()
        self.draining = False

    async def CreateGeneration(
        self,
        request: generation_pb2.GenerationRequest,
        context: grpc.aio.ServicerContext[
            generation_pb2.GenerationRequest, generation_pb2.GenerationResponse
        ],
    ) -> generation_pb2.GenerationResponse:
        with self.in_flight:
            try:
                if self.draining:
                    raise GatewayDraining(
                        "the gateway is shutting down; retry on another replica",
                        reason="GATEWAY_DRAINING",
                        retry_after=1.0,
                    )
                self._validator.check(request)
                metadata = _metadata(context)
                call = GenerationCall(
                    request=request,
                    key=self._keys.resolve(metadata),
                    budget=CallBudget.of(self._upstream_timeout, context.time_remaining()),
                    cache_control=CacheControl.from_header(metadata.get("cache-control")),
                )
                generated = await self._generator.generate(call)
            except GatewayError as error:
                status = rpc_status.to_status(to_status(error))
                await context.abort(status.code, status.details, status.trailing_metadata)
            response = generation_pb2.GenerationResponse()
            response.CopyFrom(generated.response)
            response.cache_result = generated.cache_result
            context.set_trailing_metadata(
                (("x-cache", CACHE_RESULT_NAMES[generated.cache_result]),)
            )
            return response


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The call's text metadata, keys lower-cased (binary `-bin` values are skipped)."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found
