"""The generation catalog (models, their schedulers and sizes, the defaults), fetched from
the upstream's free routes and kept for a TTL.

Those routes take no key and are rate-limited, so one refresh serves every caller; a
refresh that fails serves the last good catalog (marked `stale`) and is tried again after
a short pause, and the outage is logged once, when it starts (and once when it ends).
Before any catalog was fetched, callers get the failure during that pause: a storm of
ListModels on a cold catalog with the upstream down asks the upstream once, not once each.
"""

from __future__ import annotations

import asyncio
import logging

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.catalog_translate import models_from_json
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import GatewayError, error_from_dict, error_to_dict
from gateway.upstream import StablecogClient
from gateway.upstream_defaults import (
    DEFAULTS_ENDPOINT,
    DEFAULTS_PATH,
    MODELS_ENDPOINT,
    MODELS_PATH,
)

_log = logging.getLogger(__name__)

CATALOG_TTL_SECONDS = 300.0
# After a failed refresh, calls are served the last good catalog without asking again
# for this long (the routes are rate-limited; a storm of refreshes would not help).
RETRY_AFTER_FAILURE_SECONDS = 10.0
READ_SECONDS = 10.0


class ModelCatalog:
    """The catalog, refreshed at most once per TTL by one call at a time."""

    def __init__(
        self,
        client: StablecogClient,
        *,
        ttl: float = CATALOG_TTL_SECONDS,
        read_seconds: float = READ_SECONDS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._read_seconds = read_seconds
        self._clock = clock
        self._good: generation_pb2.ListModelsResponse | None = None
        self._refresh_at = float("-inf")
        self._failure: GatewayError | None = None  # the last refresh's, while cold
        self._failing = False
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self, seconds: float | None = None) -> generation_pb2.ListModelsResponse:
        """The catalog: cached, freshly fetched, or the last good one marked stale. Raises
        the refresh's GatewayError only when no catalog was ever fetched."""
        cached = self._cached()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._cached()
            if cached is not None:
                return cached
            bound = min(seconds or self._read_seconds, self._read_seconds)
            try:
                await self._refresh(bound)
            except GatewayError as error:
                # A catalog never fetched remembers the failure for the pause too, so the
                # callers queued on the lock do not each ask again; unless the refresh was
                # cut short by its caller's deadline (the next caller may have more).
                if self._good is not None or bound >= self._read_seconds:
                    self._refresh_at = self._clock.monotonic() + RETRY_AFTER_FAILURE_SECONDS
                    self._failure = error
                if not self._failing:
                    self._failing = True
                    _log.warning(
                        (
                            "cannot refresh the model catalog from Stablecog; serving the last "
                            "good one"
                            if self._good is not None
                            else "cannot fetch the model catalog from Stablecog"
                        )
                        + "; the catalog-aware request checks are skipped meanwhile",
                        extra={"reason": error.reason, "stale": self._good is not None},
                    )
                if self._good is None:
                    raise
            return self._answer()

    def _cached(self) -> generation_pb2.ListModelsResponse | None:
        """The catalog while no refresh is due, else None; while a catalog never fetched
        waits out the pause after a failure, that failure (each caller its own copy)."""
        if self._clock.monotonic() >= self._refresh_at:
            return None
        if self._good is not None:
            return self._answer()
        assert self._failure is not None
        raise error_from_dict(error_to_dict(self._failure))

    def snapshot(self) -> generation_pb2.ListModelsResponse | None:
        """The catalog as known now, for the catalog-aware request checks, without waiting:
        None while none was fetched or the last refresh failed (the checks are skipped
        then). Starts a refresh in the background when one is due. Never modify it."""
        due = self._clock.monotonic() >= self._refresh_at
        if due and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(
                self._refresh_in_background(), name="model catalog refresh"
            )
        return None if self._failing else self._good

    async def warm(self, seconds: float) -> None:
        """Fetch the catalog once (at start) within `seconds`; a failure is logged, never
        raised."""
        await self._get_quietly(seconds)

    async def aclose(self) -> None:
        """Stop a background refresh still running."""
        task, self._refreshing = self._refreshing, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh_in_background(self) -> None:
        try:
            await self._get_quietly(None)
        finally:
            self._refreshing = None

    async def _get_quietly(self, seconds: float | None) -> None:
        """`get`, for nobody waiting on its answer: a failure only means the catalog-aware
        checks stay skipped (get logs it once per outage; a bug is logged here)."""
        try:
            await self.get(seconds)
        except GatewayError:
            pass
        except Exception:
            _log.exception("fetching the model catalog failed unexpectedly")

    def _answer(self) -> generation_pb2.ListModelsResponse:
        assert self._good is not None
        answer = generation_pb2.ListModelsResponse()
        answer.CopyFrom(self._good)
        answer.stale = self._failing
        return answer

    async def _refresh(self, seconds: float) -> None:
        fetched_at = self._clock.wall()
        models, defaults = await asyncio.gather(
            self._client.read(MODELS_PATH, MODELS_ENDPOINT, seconds),
            self._client.read(DEFAULTS_PATH, DEFAULTS_ENDPOINT, seconds),
        )
        catalog = models_from_json(models, defaults)
        catalog.fetched_at.FromNanoseconds(int(fetched_at * 1e9))
        self._good = catalog
        self._refresh_at = self._clock.monotonic() + self._ttl
        if self._failing:
            self._failing = False
            _log.info("the model catalog is fetched from Stablecog again")
