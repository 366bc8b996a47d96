"""Everything a Redis server held and was sent: a MONITOR feed (every command and its
arguments, keys that expired or were deleted included) and a dump of every key (SCAN, then
the value by the key's type)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis


class Monitor:
    """A `MONITOR` connection to a unix-socket Redis, read in a thread until the server
    goes away; `text()` is everything it printed (Redis escapes non-printable bytes)."""

    def __init__(self, socket_path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(socket_path))
        self._sock.sendall(b"MONITOR\r\n")
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    def finish(self, timeout: float = 10.0) -> str:
        """Wait for the server to have closed the feed (it was stopped); the feed."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the MONITOR feed did not end: is the server still running?")
        self._sock.close()
        return self.text()

    def text(self) -> str:
        return b"".join(self._chunks).decode("latin-1")


@dataclass
class Dump:
    """Every key and its value, as text (bytes kept one to one, latin-1)."""

    entries: dict[str, str] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(f"{key}\t{value}" for key, value in self.entries.items())


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list | tuple | set):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{_text(k)}={_text(v)}" for k, v in value.items())
    return str(value)


def dump(socket_path: Path) -> Dump:
    """SCAN every key; read each by its TYPE (string, hash, list, set, zset, stream)."""
    client = redis.Redis(unix_socket_path=str(socket_path))
    found = Dump()
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value: object
            if kind == "string":
                value = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:  # expired between SCAN and TYPE ("none")
                continue
            found.entries[key.decode("latin-1")] = f"{kind} {_text(value)}"
            found.types[kind] = found.types.get(kind, 0) + 1
    finally:
        client.close()
    return found
