"""Redis URLs beyond redis-py's own: `redis+sentinel://` for a master found through
Sentinel. Pure: no I/O (gateway.config checks URLs with it; gateway.redis_client connects).

    redis+sentinel://[:password@]host:port[,host:port...]/<service name>[/<db>]
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinels, service name, db, password) of a redis+sentinel:// URL; ValueError."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"expected {SENTINEL_SCHEME}://")
    hosts = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    sentinels = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError("expected host:port[,host:port...] of the sentinels")
        sentinels.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("expected /<service name>[/<db>] after the sentinels")
    return sentinels, path[0], int(path[1]) if len(path) == 2 else 0, password
