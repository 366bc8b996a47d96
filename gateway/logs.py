"""Structured logging: one JSON object per line on stderr, written off the event loop.

Every line passes through `redact`, a last line of defence: nothing that looks like a
Stablecog API key or a bearer token is ever written, whatever a message or extra holds.

A call's access-log line must cost the event loop as little as possible: the loop only
makes the record and appends it to a queue (the standard library's `QueueHandler`, without
its per-record copy and pre-formatting); a `QueueListener` thread formats and writes it.
The queue wakes nobody: the writer looks every 20 ms and writes what came in one write
(waking a thread per line costs the loop a lock hand-off and a GIL switch per call). The
records' caller, thread and process fields are not collected (no line shows them).
`configure` stops the listener at exit, so every line queued is written.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Stablecog keys are `sc-` and 64 hex digits; match any long token after `sc-` to be safe.
_SECRETS = re.compile(
    r"(?P<key>\bsc-[A-Za-z0-9_-]{16,})|(?P<bearer>\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)"
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """`text` with anything that looks like an API key or bearer token replaced."""
    # Substring tests are cheap; the regex runs only on the rare line that may hold a secret.
    if "sc-" not in text and "earer" not in text and "EARER" not in text:
        return text
    return _SECRETS.sub(
        lambda m: "sc-" + REDACTED if m.group("key") else "Bearer " + REDACTED, text
    )


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, then the extras."""

    _second = -1
    _stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            # Redacted with the rest of the line below; never sent to a caller.
            entry["traceback"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, separators=(",", ":")))


class _Enqueue(logging.handlers.QueueHandler):
    """Puts the record itself on the queue: the listener formats it. (The standard
    `prepare` copies and pre-formats each record in the caller's thread; our records are
    not changed after they are logged, and tracebacks are formatted by the listener.)"""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _Lines:
    """The queue between the loop and the writer: `put_nowait` appends (a deque append is
    atomic and wakes no thread); `get` takes the oldest record, looking every `interval`
    seconds while there is none."""

    def __init__(self, interval: float = 0.02) -> None:
        self._records: collections.deque[logging.LogRecord | None] = collections.deque()
        self._interval = interval

    def put_nowait(self, record: logging.LogRecord | None) -> None:
        self._records.append(record)

    def get(self, block: bool = True) -> logging.LogRecord | None:
        while True:
            try:
                return self._records.popleft()
            except IndexError:
                if not block:
                    raise queue.Empty from None
                time.sleep(self._interval)

    def empty(self) -> bool:
        return not self._records


class _BatchedStream(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line to a buffer of its own over stderr's file descriptor (sys.stderr
    is line-buffered) and flushes it when the queue is empty: one write per burst of
    lines, not one per line."""

    def __init__(self, records: _Lines) -> None:
        sys.stderr.flush()
        super().__init__(
            open(  # noqa: SIM115 (lives as long as the process; stderr itself stays open)
                sys.stderr.fileno(),
                "w",
                buffering=1 << 16,
                encoding="utf-8",
                errors="backslashreplace",
                closefd=False,
            )
        )
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if self._records.empty():
                self.stream.flush()
        except Exception:
            self.handleError(record)


_listener: logging.handlers.QueueListener | None = None


def stop() -> None:
    """Write every line queued and stop the writer thread (at exit, or before `configure`
    starts another)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(stop)


def configure(level: str) -> None:
    """Log JSON lines at `level` to stderr through a writer thread (stopped at exit)."""
    global _listener
    stop()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup per record (the logging HOWTO's advice)
    records = _Lines()
    stream = _BatchedStream(records)
    stream.setFormatter(JsonFormatter())
    _listener = logging.handlers.QueueListener(records, stream)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level)
    # httpx logs every request line at INFO; keep it for DEBUG.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
