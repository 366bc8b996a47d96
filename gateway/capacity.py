"""What the concurrent-call cap needs from the process, checked once at start.

Each call in flight may hold one upstream connection (a file descriptor each), so the
open-file soft limit must cover the pool as far as the cap can fill it, plus the callers'
connections (HTTP/2: many calls share one) and the gateway's own files; a container default
of 1,024 would fail calls with EMFILE long before the cap. `ensure_capacity`
raises the soft limit up to the hard one when that is needed, and returns a warning for
what it cannot fix: a hard limit too low, or an upstream pool below the cap (calls would
wait for a connection in waves).
"""

from __future__ import annotations

import resource

# Callers' connections, listening sockets, /metrics scrapes, the key file, Redis, logs,
# grpc's own pipes.
FD_MARGIN = 1024


def open_files_needed(max_concurrent_calls: int, upstream_max_connections: int) -> int:
    """File descriptors for the cap: the upstream connections it can fill, and a margin."""
    return min(max_concurrent_calls, upstream_max_connections) + FD_MARGIN


def ensure_capacity(max_concurrent_calls: int, upstream_max_connections: int) -> list[str]:
    """Raise the open-file soft limit to what the cap needs; the warnings left to give."""
    warnings = []
    if upstream_max_connections < max_concurrent_calls:
        warnings.append(
            f"--upstream-max-connections ({upstream_max_connections}) is below "
            f"--max-concurrent-calls ({max_concurrent_calls}): past that many slow "
            "generations, calls wait for an upstream connection"
        )
    needed = open_files_needed(max_concurrent_calls, upstream_max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return warnings
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        warnings.append(
            f"the open-file limit is {target} (hard limit {hard}) but "
            f"--max-concurrent-calls {max_concurrent_calls} with "
            f"--upstream-max-connections {upstream_max_connections} needs {needed}: "
            "calls past it fail; raise the limit (ulimit -n, the container runtime) or "
            "lower the cap"
        )
    return warnings
