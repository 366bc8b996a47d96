"""Structured logging: one JSON object per line on stderr.

Every line passes through `redact`, a last line of defence: nothing that looks like a
Stablecog API key or a bearer token is ever written, whatever a message or extra holds.
"""

from __future__ import annotations

import json
import logging
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

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request line at INFO; keep it for DEBUG.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
