"""One generation, from a validated request to a response: the pipeline the servicer drives.

`UpstreamGenerator` translates and calls the upstream. The cache (gateway.cache) wraps
it with the same `Generator` interface, so the servicer does not know whether a
response came from the upstream or from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.auth import ApiKey
from gateway.translate import request_to_json, response_from_json
from gateway.upstream import CallBudget, StablecogClient

CacheResult = generation_pb2.CacheResult


@dataclass(frozen=True)
class CacheControl:
    """What the caller allows the cache to do (from `cache-control` metadata)."""

    lookup: bool = True
    store: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CacheControl:
        directives = {d.strip().lower() for d in (value or "").split(",")}
        if "no-store" in directives:
            return cls(lookup=False, store=False)
        if "no-cache" in directives:
            return cls(lookup=False, store=True)
        return cls()


@dataclass(frozen=True)
class GenerationCall:
    """Everything needed to serve one validated request."""

    request: generation_pb2.GenerationRequest
    key: ApiKey
    budget: CallBudget
    cache_control: CacheControl = CacheControl()


@dataclass(frozen=True)
class Generated:
    """A response and how it was produced."""

    response: generation_pb2.GenerationResponse
    cache_result: generation_pb2.CacheResult.ValueType
    # Seconds the upstream took for this call; None when no upstream call was made for it.
    upstream_seconds: float | None = None


class Generator(Protocol):
    async def generate(self, call: GenerationCall) -> Generated: ...


class UpstreamGenerator:
    """Sends every call to the upstream (reported as BYPASS: no cache took part)."""

    def __init__(self, client: StablecogClient) -> None:
        self._client = client

    async def generate(self, call: GenerationCall) -> Generated:
        answer = await self._client.create_generation(
            request_to_json(call.request), call.key, call.budget
        )
        return Generated(
            response=response_from_json(answer.payload),
            cache_result=CacheResult.CACHE_RESULT_BYPASS,
            upstream_seconds=answer.seconds,
        )
