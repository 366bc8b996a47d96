"""Which Stablecog API key a call uses.

With a configured key (STABLECOG_API_KEY, or a key file that is re-read whenever it
changes, as when Kubernetes updates a mounted Secret), the gateway uses it and
ignores callers' keys. Without one, it forwards the caller's `authorization`
metadata. With neither, the call fails UNAUTHENTICATED before reaching the upstream.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.account import ApiKey, account_fingerprint
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import MalformedCredentials, MissingCredentials

_log = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0


class KeyFile:
    """A key file re-read when its identity or timestamp changes.

    Kubernetes swaps a mounted Secret's files through a symlink, so the stat of the
    path changes; the content is also re-read once a second whatever the stat says. A
    reload keeps the last good key if the new content is empty or unreadable, so calls
    in flight and new calls never fail.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[str, str], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._clock = clock
        self._stamp: tuple[int, int, int, int] | None = None
        self._read_at = 0.0
        self._key = ""
        self._refused_stamp: tuple[int, int, int, int] | None = None
        self.current()
        if not self._key:
            raise ValueError(
                f"API key file {path} is empty or holds characters no key can have "
                "(line breaks inside it, NUL or other control characters, non-ASCII)"
            )

    def current(self) -> str:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            if self._key:
                _log.warning("cannot stat API key file; keeping the last key: %s", exc.strerror)
                return self._key
            raise
        stamp = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)
        now = self._clock.monotonic()
        # Also re-read once a second: an in-place rewrite can keep size and timestamp.
        if stamp != self._stamp or now - self._read_at >= RECHECK_SECONDS:
            self._read_at = now
            try:
                key = self._path.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                key = "\x00"  # not text: refused below like any malformed key
            except OSError as exc:
                if self._key:
                    _log.warning("cannot read API key file; keeping the last key: %s", exc.strerror)
                    return self._key
                raise
            if key and not well_formed_token(key):
                self._stamp = stamp  # re-read when it changes (or in a second), not per call
                if self._refused_stamp != stamp:  # once per version of the file
                    self._refused_stamp = stamp
                    _log.error(
                        "API key file holds characters no key can have; "
                        + ("keeping the last key" if self._key else "no key to use"),
                        extra={"path": str(self._path)},
                    )
                return self._key
            if key:
                previous = self._key
                self._key = key
                self._stamp = stamp
                if previous and key != previous:
                    _log.info(
                        "API key file changed; new calls use the new key",
                        extra={"key_fingerprint": account_fingerprint(key)},
                    )
                    if self._on_change is not None:
                        self._on_change(previous, key)
            elif self._key:
                _log.warning("API key file is empty; keeping the last key")
        return self._key


STABLECOG_KEY = re.compile(r"^sc-[0-9a-f]{64}$")
# What any bearer token can hold: visible ASCII, no spaces or control characters.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def well_formed_token(token: str) -> bool:
    """True when `token` could be an API key at all (it can go in an HTTP header)."""
    return bool(_TOKEN.match(token))


def looks_like_a_stablecog_key(key: str) -> bool:
    """Stablecog issues `sc-` and 64 lowercase hex digits."""
    return bool(STABLECOG_KEY.match(key))


class KeyResolver:
    """Picks the key for one call from the configuration and the call's metadata.

    A configured key is one `ApiKey` object (remade only when the key file changes), so
    its digests are computed once, not per call."""

    def __init__(
        self,
        *,
        static_key: str | None = None,
        key_file: KeyFile | None = None,
        upstream_url: str = "",
    ) -> None:
        self._static_key = static_key
        self._key_file = key_file
        self._upstream_url = upstream_url
        self._configured: ApiKey | None = None

    @property
    def source(self) -> str:
        """Where keys come from: `file`, `env`, or `caller` (forwarded metadata)."""
        if self._key_file is not None:
            return "file"
        return "env" if self._static_key is not None else "caller"

    def configured_key(self) -> str | None:
        if self._key_file is not None:
            return self._key_file.current()
        return self._static_key

    def resolve(self, metadata: Mapping[str, str]) -> ApiKey:
        """The key for a call; raise MissingCredentials when there is none."""
        configured = self.configured_key()
        if configured is not None:
            if self._configured is None or self._configured.value != configured:
                self._configured = ApiKey(
                    configured, configured=True, upstream_url=self._upstream_url
                )
            return self._configured
        token = metadata.get("authorization", "").strip()
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if token and not well_formed_token(token):
            raise MalformedCredentials(
                "the `authorization` metadata is not `Bearer <key>` with a key of visible "
                "ASCII characters; nothing was sent to Stablecog"
            )
        if token:
            return ApiKey(token, configured=False, upstream_url=self._upstream_url)
        raise MissingCredentials(
            "no Stablecog API key: the gateway has none configured and the call carries "
            "no `authorization: Bearer <key>` metadata"
        )
