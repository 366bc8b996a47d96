"""Bounded memory of generated images: output ID -> render parameters, and recent JPEG bytes.

Pictures are rendered lazily when their URL is fetched; outputs of different generations with
the same parameters share one cached rendering.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from uuid import UUID

from emulator.images import RenderParams


class ImageStore:
    """Remembers the newest `max_ids` outputs and caches `cache_size` rendered JPEGs (LRU)."""

    def __init__(self, max_ids: int, cache_size: int) -> None:
        self._lock = threading.Lock()
        self._max_ids = max(max_ids, 1)
        self._cache_size = cache_size
        self._params: OrderedDict[UUID, RenderParams] = OrderedDict()
        self._rendered: OrderedDict[RenderParams, bytes] = OrderedDict()

    def register(self, image_id: UUID, params: RenderParams) -> None:
        """Remember an output; the oldest is forgotten past the bound."""
        with self._lock:
            self._params[image_id] = params
            while len(self._params) > self._max_ids:
                self._params.popitem(last=False)

    def params(self, image_id: UUID) -> RenderParams | None:
        """The parameters of an output, None if unknown or forgotten."""
        with self._lock:
            return self._params.get(image_id)

    def cached(self, params: RenderParams) -> bytes | None:
        """Rendered bytes if cached (and mark them recently used)."""
        with self._lock:
            data = self._rendered.get(params)
            if data is not None:
                self._rendered.move_to_end(params)
            return data

    def put(self, params: RenderParams, data: bytes) -> None:
        """Cache rendered bytes, evicting the least recently used past the bound."""
        if self._cache_size == 0:
            return
        with self._lock:
            self._rendered[params] = data
            self._rendered.move_to_end(params)
            while len(self._rendered) > self._cache_size:
                self._rendered.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._params)
