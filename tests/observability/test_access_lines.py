"""The access log's fast path (gateway.logs.log_fields) writes exactly the line the record
path writes, redacted the same way, and steps aside for any other handler."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import logs

KEY = "sc-" + "ab" * 32
FIELDS = {
    "request_id": "r-1",
    "method": "CreateGeneration",
    "grpc_code": "OK",
    "latency_seconds": 0.001234,
    "upstream_seconds": None,
    "invalid_fields": ["prompt"],
    "note": f"Bearer {KEY}",
}


@contextlib.contextmanager
def only_the_writer() -> Iterator[None]:
    """The root logger as in the gateway's process: the writer's handler alone (pytest
    adds its own capturing handlers for each test)."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[:] = [h for h in handlers if isinstance(h, logs._Enqueue)]
    try:
        yield
    finally:
        root.handlers[:] = handlers


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_fast_line_is_the_record_line(
    configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("gateway.access")
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record.name)
        return record

    logging.setLogRecordFactory(counting)
    try:
        with only_the_writer():
            logs.log_fields(logger, logging.INFO, "call", FIELDS)
            logger.log(logging.INFO, "call", extra=FIELDS)
            logs.log_fields(logger, logging.ERROR, "call", FIELDS)
    finally:
        logging.setLogRecordFactory(factory)
    assert made == ["gateway.access"]  # only the standard path made a record
    logs.stop()  # writes every queued line
    fast, record, error = _lines(capfd.readouterr().err)
    assert list(fast) == list(record)  # the same keys in the same order
    assert {k: v for k, v in fast.items() if k != "time"} == {
        k: v for k, v in record.items() if k != "time"
    }
    assert fast["logger"] == "gateway.access" and fast["level"] == "info"
    assert error["level"] == "error"
    assert fast["note"] == "Bearer [REDACTED]"
    assert KEY not in json.dumps([fast, record, error])
    assert isinstance(fast["time"], str) and fast["time"].endswith("Z") and "T" in fast["time"]


def test_another_handler_gets_a_record(
    configured_logs: None, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("gateway.access")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        logs.log_fields(logger, logging.INFO, "call", FIELDS)
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(records) == 1 and records[0].grpc_code == "OK"  # type: ignore[attr-defined]


def test_without_configure_it_is_a_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("gateway.access")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        logs.log_fields(logger, logging.INFO, "call", FIELDS)
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.access"] == ["call"]


class _BrokenStream(logs._Stream):
    """A stream whose every write fails, as stderr does when its reader is gone."""

    def write_lines(self, lines: list[str]) -> None:
        self.attempts = getattr(self, "attempts", 0) + 1
        raise BrokenPipeError(32, "Broken pipe")


class _BrokenStderr:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def _drained(lines: logs._Lines, within: float = 10.0) -> bool:
    """Whether the writer took everything queued within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not lines._items:
            return True
        time.sleep(0.005)
    return False


def test_the_writer_outlives_a_stderr_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write loses that batch, not the writer: later lines are still taken (and
    memory does not grow), even when reporting the failure on stderr fails too."""
    lines, stream = logs._Lines(), _BrokenStream()
    stream.setFormatter(logs.JsonFormatter())
    monkeypatch.setattr(sys, "stderr", _BrokenStderr())
    writer = logs._Writer(lines, stream, interval=0.01)
    writer.start()
    try:
        for batch in range(3):
            lines.put_nowait(f'{{"batch":{batch}}}')
            lines.put_nowait(logging.LogRecord("gateway.x", logging.INFO, "", 0, "m", (), None))
            assert _drained(lines), f"batch {batch} was never taken"
        assert writer._thread.is_alive()
        assert stream.attempts >= 3
    finally:
        writer.stop()


def test_a_line_stays_one_line_and_hides_what_repr_hides() -> None:
    @dataclasses.dataclass
    class Holder:
        name: str
        token: str = dataclasses.field(repr=False, default="tok_live_0123456789")

    line = logs._json_line(
        {"prompt": "a\u2028b\x85c\u2029d \u00e9", "holder": Holder("n"), "nan": float("nan")}
    )
    assert len(line.splitlines()) == 1
    assert json.loads(line) == {
        "prompt": "a\u2028b\x85c\u2029d \u00e9",
        "holder": str(Holder("n")),
        "nan": None,
    }
    assert "tok_live" not in line


@pytest.mark.parametrize(
    "text",
    [f"key_{KEY}", f"x{KEY}", f"BeArEr {KEY[3:]}", f"authorization: bearer {KEY[3:]}"],
)
def test_keys_glued_to_words_and_bearer_in_any_case_are_redacted(text: str) -> None:
    assert KEY[3:] not in logs.redact(text)


def test_a_field_that_cannot_be_encoded_does_not_fail_the_call(
    configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    logger = logging.getLogger("gateway.access")
    with only_the_writer():
        logs.log_fields(logger, logging.INFO, "call", {"odd": Unprintable()})  # no raise
        logs.log_fields(logger, logging.INFO, "call", {"after": 1})
    logs.stop()
    assert '"after":1' in capfd.readouterr().err


def test_a_template_writes_the_line_log_fields_writes(
    configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("gateway.access")
    fields = dict(FIELDS, prompt="one line\u2028not two, caf\u00e9", caller_raw=None)
    template = logs.LineTemplate(
        logger, logging.INFO, "call", fields, ("request_id", "latency_seconds")
    )
    with only_the_writer():
        assert template.write(f"r-{KEY}", 0.000012)
        logs.log_fields(
            logger,
            logging.INFO,
            "call",
            dict(fields, request_id=f"r-{KEY}", latency_seconds=0.000012),
        )
    logs.stop()
    templated, logged = [line for line in capfd.readouterr().err.splitlines() if line][-2:]
    # The same text after the time (each line stamps its own).
    assert templated[templated.index(',"level"') :] == logged[logged.index(',"level"') :]
    assert KEY not in templated and "\u2028" not in templated
    assert json.loads(templated)["request_id"] == "r-sc-[REDACTED]"


def test_a_template_steps_aside_for_another_handler(
    configured_logs: None, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("gateway.access")
    template = logs.LineTemplate(logger, logging.INFO, "call", FIELDS, ("request_id",))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        assert template.write("r-2") is False


def test_a_line_that_cannot_be_written_is_reported_in_its_place_redacted(
    configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(f"cannot show {KEY}")

    logger = logging.getLogger("gateway.access")
    with only_the_writer():
        logger.info("before")
        logger.info("a record %s %s", KEY)  # one argument short: formatting it fails
        logs.log_fields(logger, logging.INFO, "call", {"odd": Unprintable()})
        logger.info("after")
    logs.stop()
    text = capfd.readouterr().err
    assert KEY not in text
    lines = _lines(text)
    messages = [line["message"] for line in lines]
    assert messages[-4:] == [
        "before",
        "a log line could not be encoded; it is left out",
        "a log line could not be encoded; it is left out",
        "after",
    ]
    assert lines[-2]["error"] == "cannot show sc-[REDACTED]"
    assert lines[-3]["for_logger"] == "gateway.access"


def test_lines_logged_after_stop_are_written_at_once_and_redacted(
    configured_logs: None, capfd: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("gateway.access")
    with only_the_writer():
        logs.stop()  # as at exit: nothing queues any more
        logger.info("late")
        logger.info("late and broken %s %s", KEY)
    text = capfd.readouterr().err
    assert KEY not in text
    assert [line["message"] for line in _lines(text)][-2:] == [
        "late",
        "a log line could not be encoded; it is left out",
    ]
