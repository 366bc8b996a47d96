"""Real servers the integration tests start: Redis on a unix socket; Redis on loopback TCP
as a 3-node Cluster, behind a Sentinel, or with TLS; a MONITOR feed of what Redis runs; and
a loopback port that refuses connections.

No helper here picks a "free" port to hand to a child: a port probed, closed and bound again
later can be taken in between. Children bind port 0 and report what they got (see
`tests.processes`), or listen on a unix socket in a private directory. Where Redis cannot
do either (a Cluster node, a Sentinel and the master it watches, a TLS port: each must be
a TCP port it announces or is told, and redis-server has no port 0 for TLS), the server
binds a random high port itself, and a server that exits at start (the port was taken) is
started again on another (`_on_some_port`): a retry on conflict, never a port handed over.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

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
    0: each node binds a port itself, started again on another when it was taken
    (`_on_some_port`)."""

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
        while len(self.ports) < self.nodes:
            node = self.workdir / f"node-{len(self.ports)}"
            node.mkdir()
            port, process = _on_some_port(
                lambda port, node=node: [
                    self.binary, *("--bind", "127.0.0.1"), *("--port", str(port)),
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", str(node / "nodes.conf")),
                    *_redis_args(node),
                ]
            )  # fmt: skip
            self.ports.append(port)
            self.processes.append(process)
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

    def _cluster_ok(self, port: int) -> bool:
        info = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True, timeout=5, check=False,
        )  # fmt: skip
        return b"cluster_state:ok" in info.stdout

    def stop(self) -> None:
        """Kill every node's process (by its id) and reap it."""
        _stop(self.processes)


Wrap = Callable[[socket.socket], socket.socket]


def _info(port: int, wrap: Wrap | None = None) -> str:
    """127.0.0.1:`port`'s answer to INFO (through `wrap`, e.g. TLS), or "" if none."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        try:
            conn = wrap(raw) if wrap is not None else raw  # which closes both
        except BaseException:
            raw.close()
            raise
        with conn:
            conn.sendall(b"INFO\r\n")
            data = b""
            while b"\r\n" not in data:
                data += conn.recv(4096) or b"\r\n"
            header, _, body = data.partition(b"\r\n")
            if not header.startswith(b"$"):
                return ""
            while len(body) < int(header[1:]):
                chunk = conn.recv(65536)
                if not chunk:
                    return ""
                body += chunk
            return body.decode(errors="replace")
    except (OSError, ValueError):
        return ""


def _on_some_port(
    command: Callable[[int], Sequence[str]],
    *,
    ready: Callable[[str], bool] = lambda info: True,
    wrap: Wrap | None = None,
    timeout: float = 10.0,
    attempts: int = 20,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start `command(port)` on a random high port until one start answers INFO as this
    very process (its `process_id`: another test's server on a port ours failed to take
    answers too) and `ready(info)`; a process that exits first found its port taken and
    is started on another. The port and the process; RuntimeError after `attempts`
    starts, or when one start does not answer within `timeout` seconds."""
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(20000, 30000)  # a Cluster node's bus is port + 10000
        process = subprocess.Popen(
            list(command(port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            info = _info(port, wrap)
            if f"process_id:{process.pid}\r\n" in info and ready(info):
                return port, process
            time.sleep(0.05)
        exited = process.poll() is not None
        process.kill()
        process.wait(timeout=10)
        if not exited:
            raise RuntimeError(f"{command(port)[0]} did not answer within {timeout} s")
    raise RuntimeError(f"no free port in {attempts} starts of {command(0)[0]}")


def _redis_args(workdir: Path) -> list[str]:
    return [*("--save", ""), *("--appendonly", "no"), *("--dir", str(workdir))]


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill each process (by its id) and reap it."""
    for process in processes:
        process.kill()
        process.wait(timeout=10)
    processes.clear()


class RedisSentinelServers:
    """A Redis master, `replicas` replicas of it and one Sentinel watching them (Debian's
    redis-server in sentinel mode), all on loopback TCP in `workdir`, no persistence;
    killed by process id in `stop`. `url` names the master as the gateway finds it:
    through the Sentinel; `kill_master` has it fail over to a replica."""

    SERVICE = "gateway"

    def __init__(self, workdir: Path, replicas: int = 0) -> None:
        self.binary = require_binary("redis-server")
        self.workdir = workdir
        self.replicas = replicas
        self.master_port = 0
        self.replica_ports: list[int] = []
        self.sentinel_port = 0
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"

    @property
    def master_url(self) -> str:
        """The master the Sentinel named last (`start`, `kill_master`)."""
        return f"redis://127.0.0.1:{self.master_port}/0"

    def start(self, timeout: float = 15.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _server(self, name: str, *args: str, ready: Callable[[str], bool] | None = None) -> int:
        workdir = self.workdir / name
        workdir.mkdir()
        port, process = _on_some_port(
            lambda port: [
                self.binary, *("--bind", "127.0.0.1"), *("--port", str(port)), *args,
                *_redis_args(workdir),
            ],
            ready=ready or (lambda info: True),
        )  # fmt: skip
        self.processes.append(process)
        return port

    def _start(self, timeout: float) -> None:
        self.master_port = self._server("master")
        for n in range(self.replicas):
            port = self._server(
                f"replica-{n}",
                *("--replicaof", "127.0.0.1", str(self.master_port)),
                ready=lambda info: "master_link_status:up" in info,
            )
            self.replica_ports.append(port)
        sentinel = self.workdir / "sentinel"
        sentinel.mkdir()

        def command(port: int) -> list[str]:
            # Sentinel rewrites its file: a fresh one per start.
            conf = sentinel / f"sentinel-{port}.conf"
            conf.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {sentinel}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master_port} 1\n"
                # A killed master is down after 0.5 s, not the default 30.
                f"sentinel down-after-milliseconds {self.SERVICE} 500\n"
            )
            return [self.binary, str(conf), "--sentinel"]

        # Ready once it has reached the master and learnt its replicas from it.
        watching = (
            f"name={self.SERVICE},status=ok,address=127.0.0.1:{self.master_port},"
            f"slaves={self.replicas},"
        )
        self.sentinel_port, process = _on_some_port(
            command, ready=lambda info: watching in info, timeout=timeout
        )
        self.processes.append(process)

    def kill_master(self, timeout: float = 30.0) -> None:
        """Kill the master (once its replicas have every write it acknowledged) and return
        once the Sentinel has promoted a replica and names it as the master."""
        old = self.master_port
        client = redis.Redis(host="127.0.0.1", port=old, socket_timeout=timeout)
        try:
            synced = client.execute_command("WAIT", self.replicas, int(timeout * 1000))
            if synced != self.replicas:
                raise RuntimeError(f"{synced} of {self.replicas} replicas synced")
        finally:
            client.close()
        _stop([self.processes.pop(0)])  # the master, started first
        sentinel = redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=5)
        try:
            deadline = time.monotonic() + timeout
            while True:
                _, port = sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
                )
                # Done once the failover is over: the promoted replica is what SENTINEL
                # GET-MASTER-ADDR-BY-NAME says early, and SENTINEL MASTERS (what redis-py
                # reads, like INFO) only once the switch is made.
                done = f"name={self.SERVICE},status=ok,address=127.0.0.1:{int(port)},"
                if int(port) != old and done in _info(self.sentinel_port):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no failover within {timeout} s")
                time.sleep(0.05)
        finally:
            sentinel.close()
        self.replica_ports.remove(int(port))
        self.master_port = int(port)

    def stop(self) -> None:
        _stop(self.processes)


class RedisTlsServer:
    """A private redis-server that speaks only TLS on a loopback port, with the server
    certificate of `pki` (tests.fixtures.make_pki) and client certificates required
    (signed by its CA), no persistence; killed by process id in `stop`."""

    def __init__(self, workdir: Path, pki: Path) -> None:
        self.binary = require_binary("redis-server")
        self.workdir = workdir
        self.pki = pki
        self.port = 0
        self.processes: list[subprocess.Popen[bytes]] = []

    def client_context(self, client: str) -> ssl.SSLContext:
        """A TLS context trusting the CA, presenting `client`'s certificate."""
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(self.pki / f"{client}.crt", self.pki / f"{client}.key")
        return context

    def url(self, client: str) -> str:
        """A rediss:// URL that verifies the server and presents `client`'s certificate."""
        query = "&".join(
            f"{name}={self.pki / file}"
            for name, file in (
                ("ssl_ca_certs", "ca.crt"),
                ("ssl_certfile", f"{client}.crt"),
                ("ssl_keyfile", f"{client}.key"),
            )
        )
        return f"rediss://127.0.0.1:{self.port}/0?{query}"

    def start(self, client: str) -> None:
        """Start, and wait until it answers over TLS to `client`."""
        context = self.client_context(client)
        self.port, process = _on_some_port(
            lambda port: [
                self.binary, *("--bind", "127.0.0.1"), *("--port", "0"),
                *("--tls-port", str(port)),
                *("--tls-cert-file", str(self.pki / "server.crt")),
                *("--tls-key-file", str(self.pki / "server.key")),
                *("--tls-ca-cert-file", str(self.pki / "ca.crt")),
                *("--tls-auth-clients", "yes"),
                *_redis_args(self.workdir),
            ],
            wrap=lambda raw: context.wrap_socket(raw, server_hostname="127.0.0.1"),
        )  # fmt: skip
        self.processes.append(process)

    def stop(self) -> None:
        _stop(self.processes)


class RedisMonitor:
    """What the Redis servers on `ports` (loopback) execute, as MONITOR reports it, one
    line per command, from `__enter__` to `__exit__`: for tests that wait on what a
    gateway process did in Redis (it has no other window)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RedisMonitor:
        for port in self.ports:
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"MONITOR\r\n")
            if not conn.recv(5).startswith(b"+OK"):
                raise RuntimeError(f"MONITOR refused on port {port}")
            conn.settimeout(None)
            thread = threading.Thread(target=self._read, args=(conn,), daemon=True)
            thread.start()
            self._connections.append(conn)
            self._threads.append(thread)
        return self

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            *lines, pending = (pending + data).split(b"\r\n")
            with self._lock:
                self.lines.extend(line.decode(errors="replace") for line in lines)

    def count(self, *words: str) -> int:
        """Commands seen whose line holds every one of `words` (e.g. '"SET"', '"NX"')."""
        with self._lock:
            return sum(1 for line in self.lines if all(word in line for word in words))

    def __exit__(self, *exc: object) -> None:
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)
