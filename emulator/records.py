"""What the emulator saw: one record per request, for tests to assert on.

Tokens are never kept; a record holds the token's SHA-256. A record is filled in as the request
progresses, so a request still in flight shows `status` None and `completed_at` None.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RecordedRequest:
    """One request received by the emulator."""

    method: str
    path: str
    # The body parsed as a JSON object, or None if it is empty, not JSON, or not an object.
    json: dict[str, Any] | None
    # The raw body as text (undecodable bytes replaced).
    body: str
    # Hex SHA-256 of the bearer token, None without a well-formed `Bearer <token>` header.
    token_sha256: str | None
    client_ip: str
    # Wall-clock time (time.time()) the request arrived.
    received_at: float
    # HTTP status sent, or None if the connection was closed without a response.
    status: int | None = None
    # The body's "error" field, or the text of a plain-text error body.
    error: str | None = None
    # The fault injected into this request, if any.
    fault: str | None = None
    # The emulator closed the connection without answering (drop fault or server panic), or
    # reset it mid-answer (reset_mid_response: `status` is then the status it had sent).
    connection_dropped: bool = False
    # The client closed the connection before getting the answer (noticed within 50 ms while
    # the worker runs); the generation still completes and is charged, as on the real service.
    client_disconnected: bool = False
    completed_at: float | None = None
    # The W3C trace context the caller sent (the gateway propagates its span).
    traceparent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class RequestLog:
    """The most recent records, oldest first, bounded."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._records: deque[RecordedRequest] = deque(maxlen=max(limit, 1))

    def append(self, record: RecordedRequest) -> None:
        """Add a record (the oldest is dropped past the limit)."""
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RecordedRequest]:
        """The records, oldest first."""
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        """Forget every record."""
        with self._lock:
            self._records.clear()
