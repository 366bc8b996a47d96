"""Why a listen address cannot be bound, in words an operator can act on.

grpc only says "Failed to bind to address" and aiohttp quotes an errno; both listeners
report through `cannot_listen`, which names the setting and the cause.
"""

from __future__ import annotations

import errno
import os
import socket

_REASONS = {
    errno.EADDRINUSE: "the port is already in use (is another gateway running?)",
    errno.EADDRNOTAVAIL: "the host is not an address of this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def split(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as a host and a port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def reason(error: OSError) -> str:
    """What a bind error means."""
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host ({error.strerror})"
    if error.errno in _REASONS:
        return _REASONS[error.errno]
    if error.errno is not None:
        return os.strerror(error.errno).lower()
    return str(error)


def diagnose(address: str) -> str | None:
    """Why `address` cannot be bound, found by trying it the way grpc does (SO_REUSEADDR,
    no SO_REUSEPORT), or None if it can be; for a message after grpc refused it."""
    host, port = split(address)
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        return reason(error)
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                return reason(error)
    return None


def cannot_listen(setting: str, address: str, why: str) -> OSError:
    """The error a listener raises: `setting` is how the setting is named (`--flag / VAR`)."""
    return OSError(f"cannot listen on {setting} {address}: {why}")
