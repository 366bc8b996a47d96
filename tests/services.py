"""Real servers the integration tests start: Redis on a unix socket, and a loopback port that
refuses connections.

No helper here picks a "free" port to hand to a child: a port probed, closed and bound again
later can be taken in between. Children bind port 0 and report what they got (see
`tests.processes`), or listen on a unix socket in a private directory.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# sun_path holds 108 bytes, the terminating NUL included.
_UNIX_PATH_MAX = 107


def require_binary(name: str) -> str:
    """The path of a server binary; in CI a missing one fails, elsewhere it skips loudly."""
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` is not installed (run `make services`, which apt-installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound (so
    nothing else can take it) but never listening, so a connection attempt gets a reset."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on a unix socket in `workdir` (no TCP port), no persistence;
    can be killed and restarted, empty, at the same address."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("redis-server")
        self.workdir = workdir
        self.socket_path = workdir / "redis.sock"
        if len(os.fsencode(self.socket_path)) > _UNIX_PATH_MAX:
            raise RuntimeError(f"unix socket path too long for redis-server: {self.socket_path}")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> None:
        # redis-server removes a socket file left by a killed predecessor before binding.
        self.process = subprocess.Popen(
            [
                self.binary,
                *("--port", "0"),
                *("--unixsocket", str(self.socket_path)),
                *("--unixsocketperm", "700"),
                *("--save", ""),
                *("--appendonly", "no"),
                *("--dir", str(self.workdir)),
                *("--protected-mode", "yes"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"redis-server exited at start with code {code}")
            if self._answers_ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s")

    def _answers_ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(0.5)
                conn.connect(str(self.socket_path))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill this server's process (by its id) and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class RedisClusterServers:
    """A 3-node Redis Cluster (no replicas) of private redis-servers on loopback, in
    `workdir`, no persistence; killed by process id in `stop`.

    Cluster nodes need TCP ports they announce to each other, so no unix socket and no port
    0: each node binds a port itself, and one that is taken (the node exits at start) is
    tried again on another; no port is probed and handed over."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.binary = require_binary("redis-server")
        self.cli = require_binary("redis-cli")
        self.workdir = workdir
        self.nodes = nodes
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 20.0) -> None:
        rng = random.Random()
        while len(self.ports) < self.nodes:
            port = rng.randrange(20000, 30000)  # its cluster bus is port + 10000
            if port in self.ports:
                continue
            node = self.workdir / str(port)
            node.mkdir()
            process = subprocess.Popen(
                [
                    self.binary,
                    *("--bind", "127.0.0.1"),
                    *("--port", str(port)),
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", str(node / "nodes.conf")),
                    *("--save", ""),
                    *("--appendonly", "no"),
                    *("--dir", str(node)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._answers(port, process, timeout):
                self.ports.append(port)
                self.processes.append(process)
            else:
                process.kill()
                process.wait(timeout=10)
        created = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout!r}")
        deadline = time.monotonic() + timeout
        while not all(self._cluster_ok(p) for p in self.ports):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Redis Cluster was not ok within {timeout} s")
            time.sleep(0.1)

    def _answers(self, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """True once the node answers PING; False when it exited (its port was taken)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _cluster_ok(self, port: int) -> bool:
        info = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True, timeout=5, check=False,
        )  # fmt: skip
        return b"cluster_state:ok" in info.stdout

    def stop(self) -> None:
        """Kill every node's process (by its id) and reap it."""
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        self.processes = []
