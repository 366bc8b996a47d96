"""Structured logging: one JSON object per line on stderr, written off the event loop.

Every line passes through `redact`, a last line of defence: nothing that looks like a
Stablecog API key or a bearer token is ever written, whatever a message or extra holds.

A call's access-log line must cost the event loop as little as possible. `log_fields` is
the access log's way in: while `configure`'s writer is the only handler in its way, the
loop queues a copy of the line's fields (no LogRecord, no handler chain); a `LineTemplate`
queues only the values that change from line to line. Every other line is logged as
usual, and the root logger's one handler queues the record itself. A writer thread takes
everything queued every 20 ms, encodes it and writes the lot with one write: encoded many
at a time, lines cost the interpreter less than one at a time between calls, and nothing
wakes a thread per line or hands items over one at a time (the standard library's
QueueHandler/QueueListener pair did both; BENCHMARKS.md). The records' caller, thread and
process fields are not collected (no line shows them). `configure` stops the writer at
exit, so every line queued is written.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Protocol

import orjson

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Stablecog keys are `sc-` and 64 hex digits; match any long token after `sc-` to be safe.
_SECRETS = re.compile(
    r"(?P<key>sc-[A-Za-z0-9_-]{16,})|(?P<bearer>(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)"
)
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """`text` with anything that looks like an API key or bearer token replaced, wherever
    it starts (glued to a word too: `key_sc-...`), whatever the case of "bearer"."""
    # Substring tests are cheap; the regex runs only on the rare line that may hold a secret.
    if "sc-" not in text and "bearer" not in text.lower():
        return text
    return _SECRETS.sub(
        lambda m: "sc-" + REDACTED if m.group("key") else "Bearer " + REDACTED, text
    )


class _Stamps:
    """UTC timestamps with milliseconds, `2026-12-01T12:00:00.123Z` (strftime once a
    second, not once a line). One per thread that formats lines."""

    def __init__(self) -> None:
        # (second, its stamp, millisecond, the last stamp): replaced whole, never in parts.
        self._last = (-1, "", -1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        # As LogRecord.msecs: the milliseconds truncated.
        millisecond = int((created - second) * 1000)
        last_second, stamp, last_millisecond, last = self._last
        if millisecond == last_millisecond and second == last_second:
            return last  # lines come several a millisecond when busy
        if second != last_second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        last = f"{stamp}.{millisecond:03d}Z"
        self._last = (second, stamp, millisecond, last)
        return last


# The standard library's encoder, for what orjson refuses (an int past 64 bits, a key
# that is not a string).
_FALLBACK = json.JSONEncoder(default=str, separators=(",", ":")).encode


# orjson serialises these itself, field by field; as before, they are written as `str()`
# gives them (a dataclass's repr hides its `repr=False` fields, where secrets live).
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# Characters str.splitlines() breaks lines at that orjson, unlike json, leaves unescaped
# (it escapes the ASCII ones, as JSON requires): escaped, one line stays one line.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_line(value: Any) -> str:
    """`value` (a line's fields, or one of them) as compact JSON, redacted. orjson, not
    json: ~0.6 us a line where json takes ~4-7 (BENCHMARKS.md). They write the same JSON
    for what lines hold (strings, numbers, None, lists, dicts), except that orjson leaves
    non-ASCII text as UTF-8 instead of `\\u` escapes (but for the line breaks above),
    writes NaN and infinities as null, and an enum as its value."""
    try:
        text = orjson.dumps(value, default=str, option=_OPTIONS).decode()
    except TypeError:  # an int past 64 bits, a key that is not a string
        text = _FALLBACK(value)
    if not text.isascii():
        for char, escaped in _LINE_BREAKS.items():
            text = text.replace(char, escaped)
    return redact(text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, then the extras."""

    def __init__(self) -> None:
        super().__init__()
        self._stamps = _Stamps()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._stamps(record.created),
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
        return _json_line(entry)


class _Renders(Protocol):
    def render(self, stamps: _Stamps, created: float, values: tuple[Any, ...]) -> str: ...

    def logger_of(self, values: tuple[Any, ...]) -> str: ...


# What the writer's queue holds: a record to format, a finished line, or a line to put
# together (what renders it, the time, its values).
_Item = logging.LogRecord | str | tuple[_Renders, float, tuple[Any, ...]]


class _Lines:
    """The queue between the loop and the writer: `put_nowait` appends (a deque append is
    atomic and wakes no thread); the writer takes everything queued at once."""

    def __init__(self) -> None:
        self._items: collections.deque[_Item] = collections.deque()

    def put_nowait(self, item: _Item) -> None:
        self._items.append(item)

    def take_all(self) -> list[_Item]:
        taken = []
        while True:
            try:
                taken.append(self._items.popleft())
            except IndexError:
                return taken


class _Enqueue(logging.Handler):
    """The root logger's handler: puts each record itself on the writer's queue (no copy,
    no pre-formatting: the writer formats it; records are not changed once logged)."""

    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.put_nowait(record)


class _Stream(logging.StreamHandler):  # type: ignore[type-arg]
    """The writer's handler: a buffer of its own over stderr's file descriptor (sys.stderr
    is line-buffered), written and flushed once per batch of lines."""

    def __init__(self) -> None:
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

    def write_lines(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def handleError(self, record: logging.LogRecord) -> None:
        """A record it cannot write (as the direct handler `stop` leaves, late at exit):
        reported as one line, redacted (the standard handler prints the record's arguments
        as they are, secrets included)."""
        with contextlib.suppress(Exception):
            self.write_lines([_unwritable(record.name)])


class _Writer:
    """The writer thread: every `interval` seconds it takes everything queued, formats the
    records among it and writes the lot with one write. (The standard QueueListener hands
    over and writes one item at a time: that per-item work, on the GIL the loop needs,
    was most of an access line's cost; BENCHMARKS.md.)"""

    def __init__(self, lines: _Lines, stream: _Stream, interval: float = 0.02) -> None:
        self._lines = lines
        self._stream = stream
        self._stamps = _Stamps()  # the writer's own (templates' lines are stamped here)
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, within: float = 5.0) -> None:
        """Write what is queued, then end the thread (given up after `within` seconds: a
        stderr that blocks must not hold the process's exit)."""
        self._stopping.set()
        self._thread.join(within)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        lines: list[str] = []
        for item in self._lines.take_all():
            if isinstance(item, str):
                lines.append(item)
                continue
            if isinstance(item, tuple):
                renders, created, values = item
                try:
                    lines.append(renders.render(self._stamps, created, values))
                except Exception:  # reported in its place, redacted; not fatal
                    lines.append(_unwritable(renders.logger_of(values)))
                continue
            try:
                lines.append(self._stream.format(item))
            except Exception:  # a record that cannot be formatted: reported in its place
                lines.append(_unwritable(item.name))
        if lines:
            try:
                self._stream.write_lines(lines)
            except Exception:  # never kill the writer: these lines are lost, not the next
                with contextlib.suppress(Exception):  # stderr itself may be what failed
                    traceback.print_exc(file=sys.stderr)


class _Sink:
    """Where `log_fields` queues lines while `configure`'s writer is in charge."""

    def __init__(self, records: _Lines, enqueue: _Enqueue) -> None:
        self.records = records
        self.enqueue = enqueue


def _unwritable(logger_name: str) -> str:
    """The line written in place of one that could not be encoded: what failed, redacted
    (the exception's type and message, never the values being logged)."""
    kind, error = sys.exc_info()[:2]
    return _json_line(
        {
            "time": _Stamps()(time.time()),
            "level": "error",
            "logger": "gateway.logs",
            "message": "a log line could not be encoded; it is left out",
            "for_logger": logger_name,
            "exception": kind.__name__ if kind is not None else None,
            "error": redact(str(error))[:500] if error is not None else None,
        }
    )


_writer: _Writer | None = None
_sink: _Sink | None = None
_ROOT = logging.getLogger()


def log_fields(logger: logging.Logger, level: int, message: str, fields: Mapping[str, Any]) -> None:
    """Write what `logger.log(level, message, extra=fields)` would, for a caller that has
    checked `logger.isEnabledFor(level)`. While `configure`'s writer is the only handler
    between `logger` and the stream, a copy of the fields is queued and the writer thread
    formats the line (never modify a value in `fields` afterwards); otherwise (tests
    capturing records, a handler added by an embedding program) it is logged as a
    record."""
    sink = _sink
    if sink is None or not _only_writer(logger, sink.enqueue):
        logger.log(level, message, extra=fields)
        return
    # A shallow copy: the caller's dict is free again (its values are what lines hold:
    # strings, numbers, None, lists made for the line).
    sink.records.put_nowait(
        (_FIELDS_LINE, time.time(), (level, logger.name, message, dict(fields)))
    )


class _FieldsLine:
    """Puts `log_fields`' lines together in the writer thread."""

    def logger_of(self, values: tuple[Any, ...]) -> str:
        return str(values[1])

    def render(self, stamps: _Stamps, created: float, values: tuple[Any, ...]) -> str:
        level, name, message, fields = values
        entry: dict[str, Any] = {
            "time": stamps(created),
            "level": logging.getLevelName(level).lower(),
            "logger": name,
            "message": message,
        }
        entry.update(fields)
        return _json_line(entry)


_FIELDS_LINE = _FieldsLine()


class LineTemplate:
    """The line `log_fields(logger, level, message, fields)` writes, for lines that differ
    only in the time and the values of the fields named `variable`: encoded and redacted
    once, with each variable value encoded and redacted per line (a key or token never
    spans two JSON values, so redacting the parts is redacting the line). `write` queues
    the line and returns True while `configure`'s writer is the only handler in the way;
    else it returns False and the caller logs the line with `log_fields`."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        message: str,
        fields: Mapping[str, Any],
        variable: tuple[str, ...],
    ) -> None:
        self._logger = logger
        # Unique strings in place of the time and the variable values (NUL is escaped in
        # JSON, so nothing logged can encode like them), split off the encoded line.
        marks = [f"\x00{i}-{id(self)}\x00" for i in range(len(variable) + 1)]
        entry: dict[str, Any] = {
            "time": marks[0],
            "level": logging.getLevelName(level).lower(),
            "logger": logger.name,
            "message": message,
        }
        entry.update(fields)
        for name, mark in zip(variable, marks[1:], strict=True):
            entry[name] = mark
        text = _json_line(entry)
        parts = []
        for mark in marks:
            encoded = orjson.dumps(mark).decode()
            before, found, text = text.partition(encoded)
            if not found:
                raise ValueError(f"field order unknown for {variable}")
            parts.append(before)
        parts.append(text)
        self._parts = tuple(parts)

    def write(self, *values: Any) -> bool:
        """Queue the line with these values of the variable fields, in their order (the
        writer thread puts it together: formatting many lines in one go, it costs the
        interpreter less than one at a time between calls)."""
        sink = _sink
        if sink is None or not _only_writer(self._logger, sink.enqueue):
            return False
        sink.records.put_nowait((self, time.time(), values))
        return True

    def logger_of(self, values: tuple[Any, ...]) -> str:
        return self._logger.name

    def render(self, stamps: _Stamps, created: float, values: tuple[Any, ...]) -> str:
        """The line, stamped `created`, with these values."""
        parts = self._parts
        out = [parts[0], f'"{stamps(created)}"']  # digits, '-', ':', '.', 'T', 'Z'
        for value, part in zip(values, parts[1:-1], strict=True):
            out.append(part)
            out.append(_value(value))
        out.append(parts[-1])
        return "".join(out)


def _value(value: Any) -> str:
    """One value as `_json_line` writes it inside a line."""
    if type(value) is float or type(value) is int:  # no text: nothing to escape or redact
        return orjson.dumps(value).decode()
    return _json_line(value)


def _only_writer(logger: logging.Logger, enqueue: _Enqueue) -> bool:
    """Whether `logger`'s record would reach only `enqueue` (root's one handler), unfiltered."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return False
        if current is _ROOT:
            return len(current.handlers) == 1 and current.handlers[0] is enqueue
        if current.handlers or not current.propagate:
            return False
        current = current.parent
    return False


def stop() -> None:
    """Write every line queued and stop the writer thread (at exit, or before `configure`
    starts another)."""
    global _writer, _sink
    _sink = None
    if _writer is not None:
        _writer.stop()
        _writer = None
        # What is logged after this (late at exit) is written at once, not queued for
        # a writer that is gone.
        root = logging.getLogger()
        if any(isinstance(h, _Enqueue) for h in root.handlers):
            direct = _Stream()
            direct.setFormatter(JsonFormatter())
            root.handlers[:] = [direct if isinstance(h, _Enqueue) else h for h in root.handlers]


atexit.register(stop)


def configure(level: str) -> None:
    """Log JSON lines at `level` to stderr through a writer thread (stopped at exit)."""
    global _writer, _sink
    stop()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup per record (the logging HOWTO's advice)
    records = _Lines()
    stream = _Stream()
    stream.setFormatter(JsonFormatter())
    _writer = _Writer(records, stream)
    _writer.start()
    root = logging.getLogger()
    enqueue = _Enqueue(records)
    root.handlers[:] = [enqueue]
    _sink = _Sink(records, enqueue)
    root.setLevel(level)
    # httpx logs every request line at INFO; keep it for DEBUG.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
