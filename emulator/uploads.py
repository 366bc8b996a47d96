"""Uploaded init images (`POST /v1/image/upload`): content sniffing and the keys stored.

Pure code. The emulator keeps only each upload's key and type, never its bytes: a
generation needs to know that an `s3://` key exists (sc-go HEADs the object), and the
stand-in pictures do not look at the init image's pixels.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_UPLOAD_BYTES = 10_000_000  # "10 MB" (docs/upstream-api.md#upload-endpoint)

# Go's http.DetectContentType signatures for the three accepted types.
_SIGNATURES: tuple[tuple[bytes, bytes, str], ...] = (
    (b"\xff\xd8\xff", b"\xff\xff\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", b"\xff" * 8, "png"),
    (
        b"RIFF\x00\x00\x00\x00WEBPVP",
        b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff",
        "webp",
    ),
)


def sniff_extension(data: bytes) -> str | None:
    """`jpeg`, `png` or `webp` as the first bytes say, else None."""
    for pattern, mask, extension in _SIGNATURES:
        head = data[: len(pattern)]
        if len(head) == len(pattern) and all(
            b & m == p for b, m, p in zip(head, mask, pattern, strict=True)
        ):
            return extension
    return None


class UploadStore:
    """The keys of the uploads made, oldest forgotten first past `max_keys`."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._max_keys = max_keys
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: str, extension: str) -> None:
        with self._lock:
            self._keys[key] = extension
            while len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()
