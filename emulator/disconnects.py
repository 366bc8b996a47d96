"""Notes when a client leaves while its generation runs, for every request with one watcher.

The real handler keeps going when its client leaves; the emulator does too, but records
that the client left (`RecordedRequest.client_disconnected`) as soon as it does. aiohttp
has no disconnect callback (short of cancelling handlers, which the real server does not
do), so the transports are polled: by one task for all waiting requests, every
`interval` seconds, rather than by a timer per request (10,000 slow requests held open
would otherwise cost the emulator most of a core).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web

from emulator.records import RecordedRequest

INTERVAL_SECONDS = 0.05


def client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


class DisconnectWatch:
    """The requests waiting for their generation, and the one task that polls them."""

    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self._interval = interval
        # By id: a request is a mapping, so not hashable.
        self._waiting: dict[int, tuple[web.Request, RecordedRequest]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, request: web.Request, record: RecordedRequest) -> Iterator[None]:
        """While inside, `record.client_disconnected` is set once the client leaves."""
        self._waiting[id(request)] = (request, record)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield
        finally:
            del self._waiting[id(request)]
            record.client_disconnected = record.client_disconnected or client_gone(request)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self._interval)
            for request, record in list(self._waiting.values()):
                if not record.client_disconnected and client_gone(request):
                    record.client_disconnected = True

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
