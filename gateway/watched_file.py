"""A configuration file re-read when it changes, keeping its last good content.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, so the stat of
the path changes; an in-place rewrite may keep size and timestamp, so the content is
also re-read once a second and compared by digest. A new content that does not parse
keeps the last good one: logged at error level once per content, and `valid` turns
False until a good content comes (a metric shows it); so does a file that cannot be read
(deleted, replaced by a directory, not UTF-8). The first read must succeed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from gateway.clock import SYSTEM_CLOCK, Clock

_log = logging.getLogger(__name__)
T = TypeVar("T")
RECHECK_SECONDS = 1.0


class WatchedFile(Generic[T]):
    """`parse(text)` of the file at `path`, as of its last good content.

    `parse` raises ValueError (with a message naming what is wrong) for a bad content.
    `on_validity(valid)` is told the outcome of every read that found a new content."""

    def __init__(
        self,
        path: Path,
        parse: Callable[[str], T],
        *,
        what: str,
        clock: Clock = SYSTEM_CLOCK,
        on_validity: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        self._parse = parse
        self._what = what
        self._clock = clock
        self.on_validity = on_validity
        self._stamp: tuple[int, int, int, int] | None = None
        self._read_at = float("-inf")
        self._digest = ""
        self.valid = True
        text = path.read_text(encoding="utf-8")
        self._value = parse(text)  # a bad first content fails the start
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        self._stamp = self._stat()
        self._read_at = clock.monotonic()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)

    def current(self) -> T:
        """The value of the last good content, after a re-read if one is due."""
        now = self._clock.monotonic()
        stamp = self._stat()
        if stamp == self._stamp and now - self._read_at < RECHECK_SECONDS:
            return self._value
        self._stamp, self._read_at = stamp, now
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # Deleted, a directory, not text: as invalid as a content that does not
            # parse (logged and shown once, until the file is readable again).
            if self._digest:
                self._digest = ""  # the same content back counts as new, and valid
                self.valid = False
                _log.error(
                    f"cannot read the {self._what}; keeping the last good one",
                    extra={"path": str(self.path), "error": str(exc)},
                )
                if self.on_validity is not None:
                    self.on_validity(False)
            return self._value
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return self._value
        self._digest = digest
        try:
            value = self._parse(text)
        except ValueError as exc:
            self.valid = False
            _log.error(
                f"the new {self._what} is invalid; keeping the last good one",
                extra={"path": str(self.path), "error": str(exc), "sha256": digest[:16]},
            )
        else:
            self._value, self.valid = value, True
            _log.info(
                f"{self._what} reloaded", extra={"path": str(self.path), "sha256": digest[:16]}
            )
        if self.on_validity is not None:
            self.on_validity(self.valid)
        return self._value
